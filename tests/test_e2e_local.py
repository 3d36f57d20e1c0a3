"""End to end on the real CPU engine: `autotuner run` with Ray Tune, llama-server, genai-bench, ASHA.

A small run: the baseline plus three searched trials, two stages each. Two seeded first points
make the ASHA stop deterministic: a strong config reaches stage 1 first, then a weak one is cut
there: 4 slots sharing one thread (slower than one slot here, measured: about 30%) and a
micro-batch of one token (each prompt takes 64 forward passes). One thread each: llama.cpp's
threads spin while they wait for each other, which a busy machine turns into minutes.
"""

import csv
import json
import subprocess
import sys
import uuid

import pytest
import yaml

from tests.conftest import engine_processes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    served = f"e2e-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "e2e-small",
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 2048, "threads": 1}},
        "search_space": {"parallel": [1, 4], "ubatch-size": [1, 512]},
        "benchmark": {"traffic_scenario": "D(64,32)", "concurrency": [4, 8], "max_requests_per_stage": 12},
        "objective": {"metric": "output_throughput", "secondary": ["ttft_p90"]},
        "search": {"num_samples": 3, "seed": 3, "grace_period": 1, "reduction_factor": 2,
                   "initial_points": [{"parallel": 1, "ubatch-size": 512}, {"parallel": 4, "ubatch-size": 1}],
                   "confirm_top_k": 1, "confirm_repeats": 1},
        "results_dir": str(root / "results"),
    }
    path = root / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"],
                               capture_output=True, text=True, timeout=900)
    results_dir = root / "results" / "e2e-small"
    return completed, results_dir, served


def test_run_exits_0_and_prints_the_best_config_and_gain(run):
    completed, _, _ = run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Best: experiment" in completed.stdout
    assert "Launch: " in completed.stdout
    assert "vs. engine defaults" in completed.stdout or "the engine defaults" in completed.stdout
    assert "Ray dashboard" not in completed.stdout  # --no-dashboard (tests/test_e2e_dashboard.py: with it)


def test_results_json_holds_every_trial_with_real_metrics(run):
    _, results_dir, _ = run
    results = json.loads((results_dir / "results.json").read_text())
    assert results["task_name"] == "e2e-small"
    assert results["total_experiments"] == 4
    assert results["successful_experiments"] == 4
    trials = results["all_results"]
    assert [t["experiment_id"] for t in trials] == [1, 2, 3, 4]
    assert trials[0]["baseline"] and trials[0]["status"] == "completed"
    assert trials[1]["parameters"] == {"parallel": 1, "ubatch-size": 512}
    for trial in trials:
        assert trial["status"] in ("completed", "stopped-by-scheduler")
        assert trial["error"] is None
        for stage in trial["stages"]:
            assert stage["output_throughput"] > 0
            assert stage["num_requests"] > 0 and stage["error_rate"] == 0
            assert stage["ttft_p50"] > 0 and stage["e2e_p99"] >= stage["e2e_p50"]
        assert [s["concurrency"] for s in trial["stages"]] == [4, 8][:len(trial["stages"])]
    best = results["best_result"]
    # The best config and the baseline were re-measured once each: those runs decide, not the search's.
    confirmed = results["confirmation"]
    assert 1 <= len(confirmed) <= 2 and all(len(c["runs"]) == 1 for c in confirmed)
    assert best["experiment_id"] in [c["experiment_id"] for c in confirmed]
    assert best["objective_score"] == pytest.approx(best["runs"][0])
    assert any(c["search_objective"] == max(t["objective_score"] for t in trials if t["status"] == "completed")
               for c in confirmed)
    assert results["baseline"]["experiment_id"] == 1
    baseline = results["baseline"]["objective_score"]
    assert results["gain_over_baseline"] == pytest.approx(best["objective_score"] / baseline - 1)


def test_asha_stopped_the_weak_config_after_one_stage(run):
    _, results_dir, _ = run
    trials = json.loads((results_dir / "results.json").read_text())["all_results"]
    weak = next(t for t in trials if t["parameters"] == {"parallel": 4, "ubatch-size": 1})
    assert weak["status"] == "stopped-by-scheduler"
    assert weak["stages_completed"] == 1


def test_best_command_and_trials_csv(run):
    _, results_dir, served = run
    command = (results_dir / "best_command.txt").read_text().split()
    assert command[0].endswith("llama-server")
    assert command[command.index("--alias") + 1] == served
    assert command[command.index("--ctx-size") + 1] == "2048"
    rows = list(csv.DictReader((results_dir / "trials.csv").open()))
    assert len(rows) == 4 and {"parallel", "ubatch-size", "status", "objective_score"} <= set(rows[0])
    assert (results_dir / "tune").is_dir()
    assert (results_dir / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = list(csv.DictReader((results_dir / "pareto.csv").open()))
    results = json.loads((results_dir / "results.json").read_text())
    completed = {t["experiment_id"] for t in results["all_results"] if t["status"] == "completed"}
    assert front and {int(row["experiment_id"]) for row in front} <= completed
    assert str(results["best_result"]["experiment_id"]) in {row["experiment_id"] for row in front}
    for trial in json.loads((results_dir / "results.json").read_text())["all_results"]:
        assert (results_dir / "trials" / trial["trial_id"] / "engine.log").is_file()


def test_no_engine_is_left_running(run):
    _, _, served = run
    assert engine_processes(served) == set()
