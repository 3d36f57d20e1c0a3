"""SIGKILL the driver after some trials finished, then `autotuner run --resume`: finished trials
are not run again, none is missing from results.json, and no engine is left behind. Real Ray and
genai-bench; the engine is the instant stand-in (tests/conftest.py:instant_engine)."""

import json
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from tests.conftest import Driver, engine_processes, instant_engine

pytestmark = pytest.mark.e2e


def resumable_task(tmp_path, stages) -> tuple:
    """A task of 4 random trials plus the baseline on the instant stand-in: (its file, the engines' served name)."""
    served = f"resume-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "resumed",
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "binary": str(instant_engine(tmp_path / "engine", delay_s=0.1)),
                   "args": {"ctx-size": 1024, "threads": 1}},
        "search_space": {"parallel": [1, 2, 4, 8]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": list(stages), "max_requests_per_stage": 4},
        "search": {"algorithm": "random", "num_samples": 4, "scheduler": "none", "seed": 2, "confirm_repeats": 0},
        "results_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path, served


def killed_after_two_trials(tmp_path, stages=(2, 4)):
    """A run of 4 trials plus the baseline, SIGKILLed once trials 1 and 2 are done: (its task
    file, the engines' served name, the trial numbers that finished)."""
    path, served = resumable_task(tmp_path, stages)
    with Driver(path) as first:
        first.read_until("trial 2: done")  # trials run one at a time here: 1 and 2 have finished
        done = set(re.findall(r"trial (\d+): done", "".join(first.lines)))
        time.sleep(1.5)  # let Ray save the experiment state (saved every second)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
    deadline = time.monotonic() + 15  # the watchdog of the engine that was running kills it
    while engine_processes(served) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine_processes(served) == set()
    return path, served, done


def test_ctrl_c_stops_a_resumed_run(tmp_path):
    # Ray restores the first session's stoppers from its saved state: a Ctrl-C that only reached
    # this session's let the running trial go on through all its stages, and the next ones start.
    path, served, done = killed_after_two_trials(tmp_path, stages=(1, 2, 4, 8))
    with Driver(path, "--resume") as second:
        second.read_until(": stage 2/4")
        running = re.findall(r"trial (\d+): stage 2/4", "".join(second.lines))[-1]
        second.process.send_signal(signal.SIGINT)
        output = second.finish(timeout_s=120)
    assert second.process.returncode == 1, output[-3000:]
    assert "The run was interrupted" in output
    results = json.loads((tmp_path / "results" / "resumed" / "results.json").read_text())
    statuses = {str(t["experiment_id"]): t["status"] for t in results["all_results"]}
    assert statuses[running] == "interrupted", (running, statuses)
    assert results["interrupted"] is True
    assert engine_processes(served) == set()


def test_resume_after_sigkill(tmp_path):
    path, served, done = killed_after_two_trials(tmp_path)

    second = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--resume", "--no-dashboard"],
                            capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    started_again = set(re.findall(r"trial (\d+): start", second.stdout))
    assert not (started_again & done), f"finished trials {done} ran again: {second.stdout}"
    results = json.loads((tmp_path / "results" / "resumed" / "results.json").read_text())
    assert results["total_experiments"] == 5  # the baseline and the 4 searched trials, each once
    assert len({t["trial_id"] for t in results["all_results"]}) == 5
    assert all(t["status"] == "completed" for t in results["all_results"]), results["all_results"]
    assert engine_processes(served) == set()
    # The trial the kill cut off ran again from its start: its reports are this attempt's only,
    # each stage after its new engine was ready (the killed attempt's files are set aside).
    trials_dir = tmp_path / "results" / "resumed" / "trials"
    for trial in results["all_results"]:
        assert len(trial["stages"]) == 2, trial
        marks = json.loads((trials_dir / trial["trial_id"] / "timeline.json").read_text())
        assert marks["trial_start"] < marks["engine_ready"] < marks["stage_1_done"] < marks["stage_2_done"], marks


def test_resume_after_ctrl_c_runs_the_trials_the_signal_cut_off_and_those_never_started(tmp_path):
    """The README's advice after a Ctrl-C: continue with --resume. The resumed run measures every
    trial the search was to run: the one the signal interrupted runs again from its start, the
    ones never started run, and the finished ones do not run again."""
    path, served = resumable_task(tmp_path, (2, 4, 8))
    with Driver(path) as first:
        first.read_until("trial 3: stage 1/3")  # trials run one at a time: 1 and 2 have finished
        first.process.send_signal(signal.SIGINT)
        first.finish(timeout_s=120)
    done = set(re.findall(r"trial (\d+): done", "".join(first.lines)))
    assert first.process.returncode == 1 and done == {"1", "2"}, "".join(first.lines)[-3000:]

    second = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--resume", "--no-dashboard"],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert not set(re.findall(r"trial (\d+): start", second.stdout)) & done, second.stdout
    results = json.loads((tmp_path / "results" / "resumed" / "results.json").read_text())
    assert results["interrupted"] is False
    assert [t["status"] for t in results["all_results"]] == ["completed"] * 5, results["all_results"]
    assert engine_processes(served) == set()
