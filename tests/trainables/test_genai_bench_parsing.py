"""Stage parsing from a real genai-bench 0.0.5 result file (captured against llama-server)."""

import json
import shutil
from pathlib import Path

import pytest

from llm_autotuner.task import Benchmark
from llm_autotuner.trainables.genai_bench import (GenaiBenchRunner, _read_stage, parse_stage_file,
                                                 read_request_log, stages)

DATA = Path(__file__).parent.parent / "data"
REAL_FILE = DATA / "D100_64_text-to-text_num_concurrency_4_time_9s.json"


def request_log(requests: list[dict], concurrency: int = 4, *, failed: list[tuple[float, float]] = (),
                wanted: int = 64) -> list[dict]:
    """Our request log's lines for a stage whose completed requests are `requests` (genai-bench's
    records), run `concurrency` at a time back to back, plus failed requests (sent, done)."""
    lines, free_at = [], [0.0] * concurrency
    for record in requests:
        user = free_at.index(min(free_at))
        sent = free_at[user]
        free_at[user] = sent + record["e2e_latency"]
        lines.append({"concurrency": concurrency, "sent": sent, "done": free_at[user], "status": 200,
                      "wanted_tokens": wanted, "output_tokens": record["num_output_tokens"]})
    lines += [{"concurrency": concurrency, "sent": sent, "done": done, "status": 500, "wanted_tokens": wanted,
               "output_tokens": None} for sent, done in failed]
    return lines


def test_throughput_is_over_the_stage_window_from_first_request_sent_to_last_answer():
    data = json.loads(REAL_FILE.read_text())
    raw, requests = data["aggregated_metrics"], data["individual_request_metrics"]
    log = request_log(requests)
    metrics = parse_stage_file(REAL_FILE, requests=log)
    window = max(r["done"] for r in log) - min(r["sent"] for r in log)
    assert metrics["concurrency"] == 4 and metrics["window_s"] == pytest.approx(window)
    assert metrics["output_throughput"] == pytest.approx(16 * 64 / window)
    assert metrics["requests_per_second"] == pytest.approx(16 / window)
    assert metrics["total_throughput"] == pytest.approx(sum(r["total_tokens"] for r in requests) / window)
    # genai-bench's own figure divides by a duration that runs on to its next 1 s check.
    assert window < raw["run_duration"]
    assert metrics["output_throughput_genai_bench"] == raw["mean_output_throughput_tokens_per_s"]
    assert metrics["ttft_p50"] == raw["stats"]["ttft"]["p50"]
    assert metrics["e2e_p99"] == raw["stats"]["e2e_latency"]["p99"]
    assert metrics["tpot_mean"] == raw["stats"]["tpot"]["mean"]
    assert metrics["num_requests"] == 16 and metrics["error_rate"] == 0.0


def test_requests_queued_in_the_engine_do_not_inflate_the_throughput(tmp_path):
    # An engine with one slot at concurrency 4: it answers one 64-token request a second, so 64
    # tokens/s whatever the queue. Four are sent at once and answered at 1, 2, 3, 4 s; each answer
    # sends the next, which waits behind the three queued. The first requests wait less than the
    # later ones, so their times summed over the concurrency (Little's law) gave 6.5 s: 79 tokens/s.
    data = json.loads(REAL_FILE.read_text())
    data["individual_request_metrics"] = data["individual_request_metrics"][:8]
    data["aggregated_metrics"].update(num_requests=8, num_completed_requests=8)
    path = tmp_path / REAL_FILE.name
    path.write_text(json.dumps(data))
    times = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (2, 6), (3, 7), (4, 8)]
    log = [{"concurrency": 4, "sent": sent, "done": done, "status": 200, "wanted_tokens": 64, "output_tokens": 64}
           for sent, done in times]
    metrics = parse_stage_file(path, requests=log)
    assert metrics["window_s"] == 8 and metrics["output_throughput"] == pytest.approx(64.0)


def test_without_a_request_log_the_window_is_genai_benchs_run_duration():
    # A BenchmarkJob's genai-bench runs in the cluster, without our request log.
    raw = json.loads(REAL_FILE.read_text())["aggregated_metrics"]
    metrics = parse_stage_file(REAL_FILE)
    assert metrics["window_s"] == raw["run_duration"] and metrics["timed"] == "genai-bench's run duration"
    assert metrics["output_throughput"] == pytest.approx(16 * 64 / raw["run_duration"])
    assert metrics["truncated_fraction"] is None


def test_failed_requests_cost_their_time_and_count_as_errors(tmp_path):
    data = json.loads(REAL_FILE.read_text())
    requests = data["individual_request_metrics"]
    data["aggregated_metrics"].update(num_requests=20, num_error_requests=4, error_rate=0)
    path = tmp_path / REAL_FILE.name
    path.write_text(json.dumps(data))
    clean = parse_stage_file(path, requests=request_log(requests))
    # Four more requests that each held a slot for 30 s and then failed (timeouts, say): the stage
    # lasted 30 s, not the few seconds of the answered ones.
    failing = parse_stage_file(path, requests=request_log(requests, failed=[(0.0, 30.0)] * 4))
    assert clean["window_s"] < 15
    assert failing["error_rate"] == pytest.approx(0.2)
    assert failing["window_s"] == pytest.approx(30.0)
    assert failing["output_throughput"] == pytest.approx(16 * 64 / 30.0)


def test_failed_requests_count_as_slower_than_every_answer_in_the_latency_statistics(tmp_path):
    # genai-bench 0.0.5 leaves failed requests out of its statistics: 2 of 18 requests timing out
    # would not move the p90 at all, and a config that fails its slowest requests would look faster.
    data = json.loads(REAL_FILE.read_text())
    requests = data["individual_request_metrics"]
    data["aggregated_metrics"].update(num_requests=18, num_error_requests=2)
    path = tmp_path / REAL_FILE.name
    path.write_text(json.dumps(data))
    clean = parse_stage_file(REAL_FILE, requests=request_log(requests))
    failing = parse_stage_file(path, requests=request_log(requests, failed=[(0.0, 30.0), (1.0, 1.2)]))
    slowest_ttft = max(r["ttft"] for r in requests)
    slowest_e2e = max(r["e2e_latency"] for r in requests)
    # 18 requests, the two failures last: the p90's rank (15.3) lies between the slowest answer and them.
    ttfts = sorted(r["ttft"] for r in requests) + [30.0, slowest_ttft]
    ttfts.sort()
    assert failing["ttft_p90"] == pytest.approx(ttfts[15] + 0.3 * (ttfts[16] - ttfts[15]))
    assert failing["ttft_p99"] > slowest_ttft and failing["e2e_p99"] > slowest_e2e
    assert failing["e2e_p99"] <= 30.0 and failing["e2e_mean"] > clean["e2e_mean"]
    # A failure quicker than the slowest answer (refused at once) still counts as the slowest answer.
    quick = parse_stage_file(path, requests=request_log(requests, failed=[(0.0, 0.01)] * 2))
    assert quick["ttft_p99"] == pytest.approx(slowest_ttft) and quick["ttft_p90"] >= clean["ttft_p90"]
    # Per-token latency has no value for a request that failed: as genai-bench computed it.
    assert failing["tpot_mean"] == data["aggregated_metrics"]["stats"]["tpot"]["mean"]
    # Without failures, genai-bench's own statistics stand.
    assert clean["ttft_p90"] == data["aggregated_metrics"]["stats"]["ttft"]["p90"]


def test_answers_shorter_than_asked_are_counted_as_truncated():
    requests = json.loads(REAL_FILE.read_text())["individual_request_metrics"]
    log = request_log(requests)
    assert parse_stage_file(REAL_FILE, requests=log, fixed_length=True)["truncated_fraction"] == 0.0
    for line in log[:4]:
        line["output_tokens"] = 20  # the slot's context ran out
    assert parse_stage_file(REAL_FILE, requests=log, fixed_length=True)["truncated_fraction"] == pytest.approx(0.25)
    # An openai backend lets the model stop at its end-of-text token: shorter is not truncated there.
    assert parse_stage_file(REAL_FILE, requests=log, fixed_length=False)["truncated_fraction"] is None


def test_the_request_log_is_read_per_stage(tmp_path):
    log = tmp_path / "requests.jsonl"
    log.write_text("\n".join(json.dumps(line) for line in [{"concurrency": 1, "sent": 0, "done": 1},
                                                            {"concurrency": 4, "sent": 1, "done": 2}])
                   + '\n{"concurrency": 4, "sen')  # a line being written
    assert read_request_log(log, 4) == [{"concurrency": 4, "sent": 1, "done": 2}]
    assert read_request_log(tmp_path / "missing.jsonl", 4) == [] and read_request_log(None, 4) == []


def test_stage_is_found_by_concurrency_and_half_written_files_wait(tmp_path):
    assert _read_stage(tmp_path, 4, parse_stage_file) is None
    partial = tmp_path / "D100_64_text-to-text_num_concurrency_4_time_9s.json"
    partial.write_text(REAL_FILE.read_text()[:500])
    assert _read_stage(tmp_path, 4, parse_stage_file) is None
    shutil.copy(REAL_FILE, partial)
    assert _read_stage(tmp_path, 4, parse_stage_file)["concurrency"] == 4
    assert _read_stage(tmp_path, 1, parse_stage_file) is None


def test_one_invocation_runs_every_stage_in_order():
    benchmark = Benchmark(concurrency=[1, 4, 8], traffic_scenario="D(100,64)", max_requests_per_stage=16)
    assert [(s.index, s.concurrency) for s in stages(benchmark)] == [(1, 1), (2, 4), (3, 8)]
    argv = GenaiBenchRunner(benchmark, "/tok", "sglang").arguments("http://127.0.0.1:9", "m", Path("/out"))
    assert argv[0] == "benchmark"
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
    # genai-bench's own log of a tokenizer it could not load (rich wraps the message at 80 columns)
    ((DATA / "genai-bench-uncaught-exception.log").read_text(),
     "ValueError: Couldn't instantiate the backend tokenizer from one of: (1) a `tokenizers` library "
     "serialization file, (2) a slow tokenizer"),
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
    log = request_log(requests)
    window = max(r["done"] for r in log) - min(r["sent"] for r in log)
    ttft_limit, e2e_limit = 0.9, 2.3
    by_hand = [r for r in requests if r["ttft"] <= ttft_limit and r["e2e_latency"] <= e2e_limit]
    assert 0 < len(by_hand) < len(requests)  # the limits split this real stage
    metrics = parse_stage_file(REAL_FILE, {"ttft": ttft_limit, "e2e_latency": e2e_limit}, log)
    assert metrics["goodput"] == pytest.approx(len(by_hand) / window)
    assert parse_stage_file(REAL_FILE, requests=log)["goodput"] == pytest.approx(metrics["requests_per_second"])
    assert metrics["itl_p95"] == data["aggregated_metrics"]["stats"]["tpot"]["p95"]


def test_the_genai_bench_hooks_of_the_request_log_exist():
    # trainables/timed_genai_bench.py wraps these of genai-bench 0.0.5; checked in a child process,
    # since importing genai-bench patches the process with gevent.
    import subprocess
    import sys

    check = """
import inspect
from genai_bench.metrics.aggregated_metrics_collector import AggregatedMetricsCollector
from genai_bench.protocol import UserChatResponse, UserResponse
from genai_bench.user.base_user import BaseUser
assert list(inspect.signature(AggregatedMetricsCollector.set_run_metadata).parameters)[:2] == ["self", "iteration"]
assert list(inspect.signature(AggregatedMetricsCollector.add_single_request_metrics).parameters) == ["self", "metrics"]
assert list(inspect.signature(BaseUser.sample).parameters) == ["self"]
from gevent import getcurrent
assert list(inspect.signature(BaseUser.collect_metrics).parameters) == ["self", "user_response", "endpoint"]
assert {"start_time", "end_time", "status_code"} <= set(UserResponse.model_fields)
assert "tokens_received" in UserChatResponse.model_fields
# A statistic no answered request has is skipped as genai-bench skips its audio ones.
from genai_bench.metrics.metrics import RequestLevelMetrics
assert isinstance(RequestLevelMetrics.AUDIO_METRICS_FIELDS, set)
assert list(inspect.signature(AggregatedMetricsCollector.aggregate_metrics_data).parameters)[:2] == ["self", "start_time"]
assert "AUDIO_METRICS_FIELDS" in inspect.getsource(AggregatedMetricsCollector.aggregate_metrics_data)
"""
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, "genai-bench changed where the request log hooks in:\n" + result.stderr[-2000:]
