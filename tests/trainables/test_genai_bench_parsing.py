"""Stage parsing from a real genai-bench 0.0.5 result file (captured against llama-server)."""

import json
import shutil
from pathlib import Path

import pytest

from llm_autotuner.task import Benchmark
from llm_autotuner.trainables.genai_bench import GenaiBenchRunner, _read_stage, parse_stage_file, stages

DATA = Path(__file__).parent.parent / "data"
REAL_FILE = DATA / "D100_64_text-to-text_num_concurrency_4_time_9s.json"


def test_parse_real_stage_file():
    metrics = parse_stage_file(REAL_FILE)
    data = json.loads(REAL_FILE.read_text())
    raw, requests = data["aggregated_metrics"], data["individual_request_metrics"]
    assert metrics["concurrency"] == 4
    # 16 answers of 64 tokens, over the time 4 requests were in flight.
    busy = sum(r["e2e_latency"] for r in requests) / 4
    assert metrics["busy_s"] == pytest.approx(busy)
    assert metrics["output_throughput"] == pytest.approx(16 * 64 / busy)
    assert metrics["requests_per_second"] == pytest.approx(16 / busy)
    assert metrics["total_throughput"] == pytest.approx(sum(r["total_tokens"] for r in requests) / busy)
    # genai-bench's own figure divides by a duration that runs on to its next 1 s check.
    assert busy < raw["run_duration"]
    assert metrics["output_throughput_genai_bench"] == raw["mean_output_throughput_tokens_per_s"]
    assert metrics["ttft_p50"] == raw["stats"]["ttft"]["p50"]
    assert metrics["e2e_p99"] == raw["stats"]["e2e_latency"]["p99"]
    assert metrics["tpot_mean"] == raw["stats"]["tpot"]["mean"]
    assert metrics["num_requests"] == 16 and metrics["error_rate"] == 0.0


def test_error_rate_is_computed_and_failed_requests_do_not_count(tmp_path):
    data = json.loads(REAL_FILE.read_text())
    data["aggregated_metrics"].update(num_requests=20, num_error_requests=5, error_rate=0)
    for record in data["individual_request_metrics"][:4]:
        record.update(error_code=500, error_message="boom")
    path = tmp_path / REAL_FILE.name
    path.write_text(json.dumps(data))
    metrics = parse_stage_file(path)
    assert metrics["error_rate"] == pytest.approx(0.25)
    busy = sum(r["e2e_latency"] for r in data["individual_request_metrics"][4:]) / 4
    assert metrics["output_throughput"] == pytest.approx(12 * 64 / busy)


def test_stage_is_found_by_concurrency_and_half_written_files_wait(tmp_path):
    assert _read_stage(tmp_path, 4) is None
    partial = tmp_path / "D100_64_text-to-text_num_concurrency_4_time_9s.json"
    partial.write_text(REAL_FILE.read_text()[:500])
    assert _read_stage(tmp_path, 4) is None
    shutil.copy(REAL_FILE, partial)
    assert _read_stage(tmp_path, 4)["concurrency"] == 4
    assert _read_stage(tmp_path, 1) is None


def test_one_invocation_runs_every_stage_in_order():
    benchmark = Benchmark(concurrency=[1, 4, 8], traffic_scenario="D(100,64)", max_requests_per_stage=16)
    assert [(s.index, s.concurrency) for s in stages(benchmark)] == [(1, 1), (2, 4), (3, 8)]
    argv = GenaiBenchRunner(benchmark, "/tok", "sglang").argv("http://127.0.0.1:9", "m", Path("/out"))
    assert argv[1] == "benchmark"
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "--num-concurrency"]
    assert pairs == ["1", "4", "8"]
    assert argv[argv.index("--api-base") + 1] == "http://127.0.0.1:9"  # no /v1: genai-bench adds it
    assert argv[argv.index("--traffic-scenario") + 1] == "D(100,64)"


@pytest.mark.parametrize("log, expected", [
    ("INFO start\nWARNING - No request metrics collected, one possible cause\nINFO Saving Error Rates.png\n",
     "no request finished within benchmark.max_minutes_per_stage"),
    ("INFO start\nERROR - ValueError: No values found for metric 'ttft'\nINFO bye\n",
     "ERROR - ValueError: No values found for metric 'ttft'"),
    ("INFO only this\n", "INFO only this"),
])
def test_the_reason_a_failed_run_gives_is_the_telling_line(tmp_path, log, expected):
    from llm_autotuner.cluster.procs import ProcessGroup
    from llm_autotuner.trainables.genai_bench import _reason

    group = ProcessGroup(["printf", "%s", log], log_path=str(tmp_path / "log"))
    group.process.wait(timeout=10)
    group.stop(0)
    assert _reason(group).startswith(expected)


def test_goodput_counts_the_requests_that_met_every_limit_by_hand():
    data = json.loads(REAL_FILE.read_text())
    requests = data["individual_request_metrics"]
    busy = sum(r["e2e_latency"] for r in requests) / 4
    ttft_limit, e2e_limit = 0.9, 2.3
    by_hand = [r for r in requests if r["ttft"] <= ttft_limit and r["e2e_latency"] <= e2e_limit]
    assert 0 < len(by_hand) < len(requests)  # the limits split this real stage
    metrics = parse_stage_file(REAL_FILE, {"ttft": ttft_limit, "e2e_latency": e2e_limit})
    assert metrics["goodput"] == pytest.approx(len(by_hand) / busy)
    assert parse_stage_file(REAL_FILE)["goodput"] == pytest.approx(metrics["requests_per_second"])  # no limits
    assert metrics["itl_p95"] == data["aggregated_metrics"]["stats"]["tpot"]["p95"]
