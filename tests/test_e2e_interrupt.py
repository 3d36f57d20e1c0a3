"""Ctrl-C on the driver: the running trial's engine is torn down and partial results are written."""

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from tests.conftest import engine_processes

pytestmark = pytest.mark.e2e


def test_ctrl_c_tears_down_and_keeps_finished_trials(tmp_path):
    served = f"int-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "interrupted",
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 2048}},
        "search_space": {"parallel": [2, 4], "threads": [2]},
        "benchmark": {"traffic_scenario": "D(64,32)", "concurrency": [2, 4, 8], "max_requests_per_stage": 8},
        "search": {"num_samples": 4, "scheduler": "none", "seed": 0, "confirm_repeats": 0},
        "results_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    driver = subprocess.Popen([sys.executable, "-m", "tuner.cli", "run", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 300
        # Interrupt while the second trial is benchmarking: the first has finished by then.
        while time.monotonic() < deadline:
            line = driver.stdout.readline()
            lines.append(line)
            if "trial 2: stage 1/3" in line:
                break
        else:
            pytest.fail("the run never reached trial 2:\n" + "".join(lines))
        assert engine_processes(served), "trial 2's engine should be running"
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=120)
    finally:
        driver.kill()
    output = "".join(lines) + output
    assert driver.returncode == 1, output[-3000:]
    assert "interrupted" in output
    assert "Traceback" not in output
    assert engine_processes(served) == set()
    results = json.loads((tmp_path / "results" / "interrupted" / "results.json").read_text())
    assert results["interrupted"] is True
    statuses = {r["experiment_id"]: r["status"] for r in results["all_results"]}
    assert statuses[1] == "completed"  # the baseline finished before Ctrl-C
    assert statuses[2] == "interrupted"
    assert results["best_result"]["experiment_id"] == 1
