"""Every named searcher and scheduler, a custom Searcher and a scheduler by import path, each in a
small real tuning run (one Ray instance shared by the runs): real Ray and genai-bench, the instant
stand-in engine (tests/conftest.py:instant_engine), whose slots make `parallel` matter."""

import os
import pickle
import time

import pytest
import ray
from ray.tune.search import Searcher

from llm_autotuner.tuner import driver
from llm_autotuner.task import parse_task
from tests.conftest import instant_engine

pytestmark = pytest.mark.e2e


class ListedSearcher(Searcher):
    """A custom searcher for the test: hands out the configs it was given, in order."""

    def __init__(self, configs):
        super().__init__()
        self.configs = list(configs)
        self.completed = []

    def set_search_properties(self, metric, mode, config, **spec):
        self._metric, self._mode = metric, mode
        return True  # it takes the task's space (and ignores it: its configs are listed)

    def suggest(self, trial_id):
        return dict(self.configs.pop(0)) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # As the driver starts its local Ray (tuner/driver.py:start_ray): workers at normal priority,
    # else on a busy machine each trial's actor takes half a minute to start (measured: 35 s).
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def tune_small(tmp_path, name, objective_secondary=(), space=None, concurrency=(2, 4), **search):
    task = parse_task({
        "name": name,
        "model": {"path": "builtin:smollm2", "name": "smol-search-e2e"},
        "engine": {"name": "llama.cpp", "binary": str(instant_engine(tmp_path / "engine", delay_s=0.1)),
                   "args": {"ctx-size": 1024, "threads": 1}},
        "search_space": space or {"parallel": [1, 2, 4],
                                  "ubatch-size": {"type": "int", "min": 64, "max": 128, "step": 64}},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": list(concurrency), "max_requests_per_stage": 4},
        "objective": {"metric": "output_throughput", "secondary": list(objective_secondary)},
        "search": {"num_samples": 3, "seed": 5, "baseline": False, "confirm_repeats": 0} | search,
        "results_dir": str(tmp_path),
    })
    summary = driver.run(task)
    assert summary["total_experiments"] >= 1
    for trial in summary["all_results"]:
        assert trial["status"] in ("completed", "stopped-by-scheduler", "stopped-by-budget"), trial["error"]
        # A trial the time budget cut before its first stage has none.
        assert all(stage["output_throughput"] > 0 for stage in trial["stages"])
    assert any(trial["stages"] for trial in summary["all_results"])
    return summary


# Two of the named pairs (each a whole run): the lookup is one table for all (tuner/registry.py).
@pytest.mark.parametrize("algorithm, scheduler", [("optuna", "hyperband"), ("hyperopt", "none")])
def test_named_searchers_and_schedulers(tmp_path, algorithm, scheduler):
    summary = tune_small(tmp_path, f"{algorithm}-{scheduler}", algorithm=algorithm, scheduler=scheduler,
                         num_samples=2)
    assert summary["total_experiments"] == 2
    if scheduler == "none":
        assert all(t["status"] == "completed" for t in summary["all_results"])


def test_a_search_asked_for_more_trials_than_its_space_holds_runs_each_config_once(tmp_path):
    space = {"parallel": [1, 4], "ubatch-size": [64]}
    summary = tune_small(tmp_path, "small", algorithm="hyperopt", scheduler="none", num_samples=8, space=space)
    assert sorted(t["parameters"]["parallel"] for t in summary["all_results"]) == [1, 4]


@pytest.mark.extended  # the grid's points: tests/tuner/test_space.py; a grid run: benchmarks/search_efficiency.py
def test_grid_runs_the_whole_cartesian_product(tmp_path):
    space = {"parallel": [1, 4], "ubatch-size": {"type": "int", "min": 64, "max": 128, "step": 64}}
    summary = tune_small(tmp_path, "grid", algorithm="grid", scheduler="none", num_samples=1, space=space)
    tried = sorted((t["parameters"]["parallel"], t["parameters"]["ubatch-size"]) for t in summary["all_results"])
    assert tried == [(1, 64), (1, 128), (4, 64), (4, 128)]  # a stepped range's every value, max included


def test_custom_searcher_and_scheduler_by_import_path(tmp_path):
    configs = [{"parallel": 4, "ubatch-size": 64}, {"parallel": 1, "ubatch-size": 128}]
    summary = tune_small(tmp_path, "custom", algorithm="tests.tuner.test_search_e2e:ListedSearcher",
                         algorithm_args={"configs": configs},
                         scheduler="ray.tune.schedulers:MedianStoppingRule",
                         scheduler_args={"time_attr": "stage", "grace_period": 1, "min_samples_required": 1})
    assert [t["parameters"] for t in summary["all_results"]] == configs


def test_optuna_learns_every_objective_when_there_are_several(tmp_path):
    summary = tune_small(tmp_path, "multi", algorithm="optuna", scheduler="none",
                         objective_secondary=["ttft_p90"])
    assert summary["objectives"] == ["output_throughput", "ttft_p90"]
    assert summary["pareto_front"]
    # The searcher's saved state: an Optuna study with one direction per objective, told both
    # values of every trial (what the trial measured, not the primary score alone).
    state_file = next((tmp_path / "multi" / "tune").glob("searcher-state-*.pkl"))
    study = pickle.loads(state_file.read_bytes())["_ot_study"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    # A config Optuna suggested again did not run again: that suggestion was told the first run's values.
    told = {tuple(round(v, 9) for v in t.values) for t in study.trials if t.values}
    measured = {(round(t["objectives"]["output_throughput"], 9), round(t["objectives"]["ttft_p90"], 9))
                for t in summary["all_results"]}
    assert len(measured) == 3 and told == measured


def test_time_budget_ends_the_search(tmp_path):
    began = time.monotonic()
    space = {"parallel": [1, 2, 4], "ubatch-size": {"type": "int", "min": 64, "max": 128}}  # 195 configs
    # Twelve stages of a second or more each: the budget always ends inside a trial (with two
    # stages, it once ended exactly as the second trial finished, and no trial was cut). 75 s: the
    # first trial finishes within it even on a busy machine (under load it took 23 s to its first
    # stage, and a 40 s budget cut it at stage 8: nothing left to confirm), and it falls inside the
    # third trial on an idle one (a trial took 29-31 s there: a 60 s budget once ended just as the
    # second trial finished).
    summary = tune_small(tmp_path, "budget", algorithm="random", scheduler="none", num_samples=50,
                         time_budget_s=75, space=space, concurrency=range(1, 13), confirm_top_k=1, confirm_repeats=1)
    assert 1 <= summary["total_experiments"] < 50
    # The trial the budget cut mid-way says so (not "stopped by the scheduler": there is none here).
    statuses = [t["status"] for t in summary["all_results"]]
    assert statuses[-1] == "stopped-by-budget" and "stopped-by-scheduler" not in statuses, statuses
    # The stop the budget left for the search's trials does not stop the confirmation run.
    [finalist] = summary["confirmation"]
    assert len(finalist["runs"]) == 1 and finalist["failed_runs"] == 0, finalist
    # The budget, the last trial's teardown, one confirmation run and the results.
    assert time.monotonic() - began < 75 + 90
