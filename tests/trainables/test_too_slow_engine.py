"""An engine too slow for the load fails its trial as soon as that is known, not minutes later.

Seen on a busy 2-core machine (`make tune` under ../shared/tools/with-load, 2026-12-04): the
baseline's llama-server (2 polling threads) answered none of the 8 warm-up requests in the
warm-up's 300 s, then genai-bench ran all three 60-s stages without a request finishing, and only
then did the trial fail: 7.7 minutes for a verdict the warm-up had already given. The engine here
is the stand-in that answers after a sleep longer than any deadline; genai-bench is real.
"""

import json
import time

import pytest

from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import LLAMA_CPP
from llm_autotuner.cluster.local import LocalDeployer
from llm_autotuner.errors import BenchmarkError
from llm_autotuner.task import parse_task
from llm_autotuner.trainables.genai_bench import GenaiBenchRunner
from llm_autotuner.trainables.warmup import warm_up
from tests.conftest import instant_engine

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def silent_engine(smollm2, tmp_path_factory):
    """Healthy, but every answer comes after 1000 s."""
    workdir = tmp_path_factory.mktemp("engine")
    binary = instant_engine(workdir / "never-answers", delay_s=1000, slots=False)
    spec = EngineSpec(experiment="slow", run_id="slow-run", trial_id="t1", profile=LLAMA_CPP,
                      executable=str(binary), model_path=smollm2, served_name="smol-too-slow",
                      flags={"parallel": 2}, workdir=workdir)
    with LocalDeployer().deployed(spec, 60) as endpoint:
        yield endpoint


def benchmark(**settings):
    return parse_task({"name": "slow", "model": {"path": "builtin:smollm2"}, "engine": {"name": "llama.cpp"},
                       "search_space": {"threads": [1]},
                       "benchmark": {"traffic_scenario": "D(16,8)", "concurrency": [1, 2],
                                     "max_requests_per_stage": 4, **settings}}).benchmark


def test_a_warm_up_that_got_no_answer_fails_the_trial_before_genai_bench_starts(silent_engine, tokenizer, tmp_path):
    runner = GenaiBenchRunner(benchmark(stage_timeout_s=61), tokenizer, "sglang")
    with pytest.raises(BenchmarkError, match=r"warm-up: none of its 2 requests was answered within "
                                             r"benchmark.stage_timeout_s \(61 s\): the engine is too slow"):
        with runner.run(silent_engine, "smol-too-slow", tmp_path):
            pass
    warm_up = json.loads((tmp_path / "genai-bench" / "warmup.json").read_text())
    assert warm_up["answered"] == 0 and warm_up["ended"] - warm_up["started"] >= 59
    # genai-bench (started as the warm-up began, to import itself) never benchmarked: it was never
    # given its arguments, so it made no run folder and sent no request.
    assert not (tmp_path / "genai-bench" / "run").exists()
    assert not (tmp_path / "genai-bench" / "requests.jsonl").read_text()


def test_a_stage_that_finished_no_request_fails_at_its_end_not_after_the_next_stages(silent_engine, tokenizer,
                                                                                     tmp_path):
    # No warm-up, so genai-bench meets the silent engine itself: stage 1 ends after its minute
    # with nothing finished; genai-bench would then run stage 2 for another minute.
    runner = GenaiBenchRunner(benchmark(warmup_requests=0), tokenizer, "sglang")
    with pytest.raises(BenchmarkError, match="genai-bench: no request finished within benchmark.max_minutes_per_stage"):
        with runner.run(silent_engine, "smol-too-slow", tmp_path) as stages:
            next(iter(stages))
    log = (tmp_path / "genai-bench.log").read_text()
    assert "num_concurrency 1 has finished" in log
    assert "num_concurrency 2 has finished" not in log  # killed in stage 2, not waited for


def test_the_warm_up_ends_as_soon_as_the_engine_is_known_to_have_stopped_serving(silent_engine, tmp_path):
    # The trial's own check (an engine crash, or the run's stop: tests/test_e2e_interrupt.py) is
    # asked while the warm-up's requests wait, not only after they come back (here: never).
    asked = []

    def failure():
        asked.append(time.monotonic())
        return "engine exited with code 1 during the benchmark" if len(asked) >= 4 else None

    began = time.monotonic()
    with pytest.raises(BenchmarkError, match=r"engine exited with code 1 during the benchmark \(in the warm-up\)"):
        warm_up(silent_engine.url, "smol-too-slow", benchmark(stage_timeout_s=61), "sglang", tmp_path / "warmup.json",
                None, failure)
    assert time.monotonic() - began < 10  # not the warm-up's 61 s
