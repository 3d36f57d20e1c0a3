"""The confirmation runs, on a real Ray Tune: the finalists (the best configs and the baseline)
each run in turns, A B C, B C A, C A B, not back to back, so a drift of the machine over minutes is
shared among them, and no config always runs first or right after the same other one. A stand-in trainable takes the engine's place: it logs when each config ran."""

import json
import os

import pytest
import ray
from ray import tune

from pyarrow.fs import LocalFileSystem

from llm_autotuner.cluster.storage import Storage
from llm_autotuner.outcome import BASELINE_KEY
from llm_autotuner.task import parse_task
from llm_autotuner.trainables.trial import Resolved
from llm_autotuner.tuner import driver
from llm_autotuner.tuner.interrupt import Interrupt
from llm_autotuner.tuner.results import TrialRecord, summarize


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ.setdefault("RAY_worker_niceness", "0")  # as the driver starts its local Ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def stand_in(config: dict, log: str) -> None:
    """One full-length stage, as TrialTrainable reports it, worth 100 + parallel (the baseline 100)."""
    with open(log, "a") as file:
        file.write(json.dumps(config, sort_keys=True) + "\n")
    value = 100.0 + (config.get("parallel") or 0)
    tune.report({"stage": 1, "score": value, "objective": value, "objectives": {"output_throughput": value},
                 "violation": None, "slos_met": {}, "error": None, "outcome": "completed",
                 "metrics": {"concurrency": 2, "output_throughput": value}})


def searched(number: int, parallel: int | None, value: float) -> TrialRecord:
    report = {"stage": 1, "score": value, "objective": value, "error": None, "slos_met": {}, "outcome": "completed",
              "metrics": {"concurrency": 2, "output_throughput": value}}
    return TrialRecord(f"id{number}", {"parallel": parallel}, parallel is None, [report], experiment_id=number)


def test_the_best_configs_and_the_baseline_are_re_measured_in_turns(tmp_path):
    task = parse_task({"name": "t", "model": {"path": "/models/m.gguf"}, "engine": {"name": "llama.cpp"},
                       "search_space": {"parallel": [1, 2, 4]}, "benchmark": {"concurrency": [2]},
                       "search": {"confirm_top_k": 2, "confirm_repeats": 3}})
    trials = [searched(1, None, 90.0), searched(2, 1, 130.0), searched(3, 2, 110.0), searched(4, 4, 100.0)]
    log = tmp_path / "ran.jsonl"
    trainable = tune.with_parameters(stand_in, log=str(log))
    storage = Storage(LocalFileSystem(), str(tmp_path), str(tmp_path))
    resolved = Resolved("s", "/m", "m", "/t", storage, "r")
    runs, stopped_because = driver._confirm(task, trainable, resolved, tmp_path / "results", trials, 1,
                                            Interrupt(storage))
    assert stopped_because is None
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    a, b, baseline = {"parallel": 1}, {"parallel": 2}, {"parallel": None, BASELINE_KEY: True}
    assert ran == [a, b, baseline, b, baseline, a, baseline, a, b]
    summary = summarize(task, resolved, trials, "unused", runs)
    assert {c["experiment_id"]: c["runs"] for c in summary["confirmation"]} == {3: [102.0] * 3,
                                                                              2: [101.0] * 3,
                                                                              1: [100.0] * 3}
    assert summary["gain_over_baseline"] == pytest.approx(0.02)
