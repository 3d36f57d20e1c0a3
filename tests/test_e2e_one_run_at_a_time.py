"""A second `autotuner run` (or `--resume`) of a task that is being tuned is refused with one line;
it would move the running one's results aside under it and mix the two runs' trials. Real runs."""

import json
import subprocess
import sys

import pytest

from tests.conftest import Driver
from tests.test_e2e_interrupt import write_task

pytestmark = pytest.mark.e2e


def autotuner(*args):
    return subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", *args, "--no-dashboard"],
                          capture_output=True, text=True, timeout=120)


def test_a_second_run_of_a_task_being_tuned_is_refused_and_the_first_goes_on(tmp_path):
    path, _ = write_task(tmp_path, "alone", 0.05, {"concurrency": [2], "max_requests_per_stage": 4},
                         {"num_samples": 2})
    with Driver(path) as first:
        first.read_until("trial 1: start")
        for extra in ([], ["--resume"]):
            second = autotuner("run", str(path), *extra)
            assert second.returncode == 2, second.stdout + second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
            assert "alone:" in lines[0] and "is in use by run" in lines[0], lines[0]
        output = first.finish()
    assert first.process.returncode == 0, output[-3000:]
    # The first run's results are where they were and complete: nothing was moved aside under it.
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["alone"]
    results = json.loads((tmp_path / "results" / "alone" / "results.json").read_text())
    assert {r["status"] for r in results["all_results"]} == {"completed"} and len(results["all_results"]) == 3  # baseline + 2
    # Once it has ended, the task can be run again.
    again = autotuner("run", str(path))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
