"""Runs where no trial can win: a broken SLO and a flag the engine rejects. Real engine, real Ray."""

import json
import subprocess
import sys
import uuid

import pytest
import yaml

from tests.conftest import engine_processes

pytestmark = pytest.mark.e2e


def run_task(tmp_path, **overrides):
    served = f"fail-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "no-winner",
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 1024}},
        "search_space": {"parallel": [2, 4]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [2, 4], "max_requests_per_stage": 4},
        "search": {"num_samples": 1, "seed": 0, "confirm_repeats": 0},
        "results_dir": str(tmp_path),
    } | overrides
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    completed = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(path)],
                               capture_output=True, text=True, timeout=600)
    results = json.loads((tmp_path / "no-winner" / "results.json").read_text())
    assert engine_processes(served) == set()
    return completed, results


def test_a_broken_slo_makes_every_trial_infeasible(tmp_path):
    completed, results = run_task(tmp_path, slos={"ttft_p50": 0.0001})
    assert completed.returncode == 1
    assert "No trial completed every stage" in completed.stdout
    for trial in results["all_results"]:
        assert trial["status"] == "infeasible"
        assert trial["stages_completed"] == 1  # stopped at the first stage that broke it
        assert trial["slo_violation"].startswith("ttft_p50 ")
        assert trial["slo_violation"].endswith("> 0.0001 s at concurrency 2")
    assert results["best_result"] is None


def test_a_rejected_flag_fails_each_trial_with_the_engines_reason(tmp_path):
    completed, results = run_task(tmp_path, engine={"name": "llama.cpp", "args": {"no-such-flag": 1}})
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert results["total_experiments"] == 2 and results["successful_experiments"] == 0
    for trial in results["all_results"]:
        assert trial["status"] == "failed"
        assert "DeploymentError: engine exited with code" in trial["error"]
        assert "no-such-flag" in trial["error"]
