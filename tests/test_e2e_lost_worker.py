"""A lost Ray worker (its process SIGKILLed, as when its node dies or the OOM killer strikes) is the
infrastructure's failure, not the config's: the trial is run again once, its engine dies with the
worker, the new attempt's numbers are its own; lost twice, the run stops naming the cause.
Real Ray and genai-bench; the engine is the instant stand-in behind the slow-exit wrapper
(tests/test_e2e_lifecycle.py:slow_task)."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Driver, engine_processes, genai_bench_processes
from tests.test_e2e_lifecycle import lifetimes, slow_task

pytestmark = pytest.mark.e2e


def parent(pid: int) -> int:
    # The parent's PID is the 2nd field after the parenthesised command name (which may hold spaces).
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def trial_worker(served: str) -> int:
    """The Ray worker running the trial whose engine serves `served`: the nearest ancestor of the
    engine (behind its slow-exit wrapper) titled `ray::<actor class>...`. The class is ours
    (TrialTrainable) on a first attempt, but Ray Tune's `with_resources` subclass
    (ResourceTrainable) on a retried one: seen in CI. Found through the engine's unique name, as
    other tests' runs may be going on alongside."""
    [pid] = engine_processes(served)
    ancestry = []
    while pid > 1:
        pid = parent(pid)
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
        if title.startswith(b"ray::"):
            return pid
        ancestry.append(f"{pid}: {title[:120]!r}")
    pytest.fail(f"no Ray worker above the engine serving {served}; its ancestors: {ancestry}")


def kill_worker_and_its_engine_goes(served: str, root: Path) -> None:
    assert genai_bench_processes(root), "the trial's genai-bench should be running"
    os.kill(trial_worker(served), signal.SIGKILL)
    deadline = time.monotonic() + 10  # the watchdog reacts at once; slack for a loaded machine
    while time.monotonic() < deadline:
        if not engine_processes(served) and not genai_bench_processes(root):
            return
        time.sleep(0.1)
    pytest.fail(f"the engine or genai-bench of a lost worker outlived it by 10 s: {engine_processes(served)}")


def test_a_lost_worker_runs_the_trial_again_and_a_second_loss_stops_the_run(tmp_path):
    path, served, log = slow_task(tmp_path, "lost", delay_s=0.0, num_samples=3, scheduler="none",
                                  confirm_repeats=0)
    with Driver(path) as driver:
        driver.read_until("trial 1: stage 1/3")
        kill_worker_and_its_engine_goes(served, tmp_path)
        driver.read_until("trial 1: Ray lost the trial's worker: its worker process died")
        driver.read_until("trial 1: done")
        driver.read_until("trial 2: stage 1/3")
        kill_worker_and_its_engine_goes(served, tmp_path)
        driver.read_until("trial 2: stage 1/3")  # its second attempt
        kill_worker_and_its_engine_goes(served, tmp_path)
        output = driver.finish(timeout_s=300)
    assert driver.process.returncode == 2, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    [reason] = [line for line in output.splitlines() if line.startswith("autotuner: stopped")]
    assert "its worker process died" in reason and "twice for the same trial" in reason, reason
    results = json.loads((tmp_path / "results" / "lost" / "results.json").read_text())
    first, second, *rest = results["all_results"]
    # Run again after the loss: completed, with only its second attempt's stages (one engine's numbers).
    assert first["status"] == "completed" and first["ray_failures"] == 1, first
    assert [s["concurrency"] for s in first["stages"]] == [1, 2, 4]
    assert second["status"] == "failed-infrastructure" and second["objective_score"] is None, second
    assert "its worker process died" in second["error"]
    assert all(t["status"] != "completed" for t in rest)  # the run stopped: no trial after the second loss
    # Each attempt started its own engine, never two at once (the killed ones left no exit line).
    engines = lifetimes(log)
    assert len(engines) == 4, engines
    assert engine_processes(served) == set()
    attempts = sorted(p.name for p in (tmp_path / "results" / "lost" / "trials").iterdir())
    assert sum(".attempt-" in name for name in attempts) == 2, attempts  # the lost attempts' files kept apart
