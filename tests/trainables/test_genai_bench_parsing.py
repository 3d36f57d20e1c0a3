"""Stage parsing from a real genai-bench 0.0.5 result file (captured against llama-server)."""

import json
import shutil
from pathlib import Path

import pytest

from tuner.task import Benchmark
from trainables.genai_bench import GenaiBenchRunner, _read_stage, parse_stage_file, stages

DATA = Path(__file__).parent.parent / "data"
REAL_FILE = DATA / "D100_64_text-to-text_num_concurrency_4_time_9s.json"


def test_parse_real_stage_file():
    metrics = parse_stage_file(REAL_FILE)
    raw = json.loads(REAL_FILE.read_text())["aggregated_metrics"]
    assert metrics["concurrency"] == 4
    assert metrics["output_throughput"] == raw["mean_output_throughput_tokens_per_s"]
    assert metrics["total_throughput"] == raw["mean_total_tokens_throughput_tokens_per_s"]
    assert metrics["requests_per_second"] == raw["requests_per_second"]
    assert metrics["ttft_p50"] == raw["stats"]["ttft"]["p50"]
    assert metrics["e2e_p99"] == raw["stats"]["e2e_latency"]["p99"]
    assert metrics["tpot_mean"] == raw["stats"]["tpot"]["mean"]
    assert metrics["num_requests"] == 16 and metrics["error_rate"] == 0.0


def test_error_rate_is_computed_not_taken_from_genai_bench(tmp_path):
    data = json.loads(REAL_FILE.read_text())
    data["aggregated_metrics"].update(num_requests=20, num_error_requests=5, error_rate=0)
    path = tmp_path / REAL_FILE.name
    path.write_text(json.dumps(data))
    assert parse_stage_file(path)["error_rate"] == pytest.approx(0.25)


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
