"""A run never hangs and never runs two engines on one resource, whatever a teardown takes, and a
signal stops it at once. The engine is the instant stand-in (tests/conftest.py:instant_engine,
with llama-server's slots) behind a wrapper that takes EXIT_DELAY_S to exit after SIGTERM (as a GPU
engine freeing its memory does) and logs when it started and exited; real genai-bench, real Ray.
(What hung in issue 6 was a teardown longer than Ray's wait for it, not an engine's speed.) Properties are checked from those recorded times: at the moment they
must hold, not by what is left at the end."""

import json
import signal
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import Driver, engine_processes, genai_bench_processes, instant_engine
from tests.data.slow_exit_engine import launcher
from llm_autotuner.cluster.procs import niceness

pytestmark = pytest.mark.e2e

EXIT_DELAY_S = 5.0  # well above every poll interval of the teardown path, short enough for CI
SLACK_S = 5.0  # signal delivery, polling and a loaded machine


def lifetimes(log: Path) -> list[tuple[float, float | None]]:
    """(start, exit) per engine from the wrapper's log, in start order; exit None if it never
    exited by itself (SIGKILLed by a sweep instead of torn down)."""
    starts, exits = {}, {}
    for line in log.read_text().splitlines():
        event, when, pid = line.split()
        if event in ("start", "exit"):
            (starts if event == "start" else exits)[pid] = float(when)
    return sorted((starts[pid], exits.get(pid)) for pid in starts)


def slow_task(tmp_path, name, delay_s=EXIT_DELAY_S, **search):
    served = f"{name}-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "lifetimes.log"
    engine = instant_engine(tmp_path / "instant-engine", delay_s=0.1)
    task = {
        "name": name,
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "binary": str(launcher(tmp_path / "engine", str(engine), delay_s)),
                   "args": {"ctx-size": 1024, "threads": 1}, "env": {"ENGINE_LIFETIMES": str(log)}},
        "search_space": {"parallel": [1, 2, 4], "batch-size": [64, 256, 2048]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [1, 2, 4], "max_requests_per_stage": 4},
        "search": {"algorithm": "random", "seed": 3, "num_samples": 5, "grace_period": 1, "reduction_factor": 2,
                   "confirm_top_k": 1, "confirm_repeats": 1} | search,
        "results_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path, served, log


def timeline(results_dir: Path, trial_id: str) -> dict:
    return json.loads((results_dir / "trials" / trial_id / "timeline.json").read_text())


def test_a_search_with_an_engine_slow_to_exit_finishes_and_never_overlaps_engines(tmp_path):
    path, served, log = slow_task(tmp_path, "slow-exit")
    with Driver(path) as driver:
        output = driver.finish(timeout_s=1500)
    assert driver.process.returncode == 0, output[-4000:]
    results_dir = tmp_path / "results" / "slow-exit"
    results = json.loads((results_dir / "results.json").read_text())
    assert results["total_experiments"] == 6  # the baseline and 5 searched trials: none left pending
    statuses = [t["status"] for t in results["all_results"]]
    assert set(statuses) <= {"completed", "stopped-by-scheduler"}, results["all_results"]
    assert "stopped-by-scheduler" in statuses  # ASHA stopped at least one: its teardown is checked below
    confirm_runs = sum(len(c["runs"]) + c["failed_runs"] for c in results["confirmation"])
    assert confirm_runs >= 1 and "[autotuner] confirming the best" in output
    assert "\x1b[" not in output  # not a terminal: lines, never a panel redrawn in place (not in the confirmation either)
    engines = lifetimes(log)
    assert len(engines) == 6 + confirm_runs  # every trial and confirmation run started one engine
    assert all(exit is not None for _, exit in engines), engines  # each exited by its teardown
    for (_, earlier_exit), (later_start, _) in zip(engines, engines[1:]):
        assert later_start >= earlier_exit, f"two engines at once: {engines}"
    # An ASHA-stopped trial's engine is gone within its teardown time of its last stage, during
    # the run (its trial recorded `engine_gone` after the wrapper had exited).
    for trial in results["all_results"]:
        if trial["status"] == "stopped-by-scheduler":
            marks = timeline(results_dir, trial["trial_id"])
            last_stage = marks[f"stage_{trial['stages_completed']}_done"]
            [exit] = [exit for start, exit in engines if marks["trial_start"] <= start <= last_stage]
            assert exit - last_stage <= EXIT_DELAY_S + SLACK_S, (trial, marks, exit)
            assert exit <= marks["engine_gone"] + 0.5
    assert engine_processes(served) == set()


def wait_for_teardown(log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and " stopping " in f" {log.read_text()}".replace("\n", " "):
            return
        time.sleep(0.1)
    pytest.fail("no engine was ever torn down")


def run_and_interrupt(tmp_path, name, marker, delay_s=EXIT_DELAY_S, sig=signal.SIGINT,
                      hang_up=False, **search):
    """Run the slow-exit task, send `sig` once `marker` is printed (or, for "teardown", once an
    engine got its SIGTERM), and check what must hold for any interrupt. `hang_up`: first close
    the driver's output, as a terminal that went away does (its output then cannot be read)."""
    path, served, log = slow_task(tmp_path, name, delay_s, **search)
    with Driver(path) as driver:
        if marker == "teardown":
            wait_for_teardown(log)
        else:
            driver.read_until(marker, timeout_s=600)
        if hang_up:
            driver.process.stdout.close()
        sent = time.time()
        driver.process.send_signal(sig)
        output = "(closed)" if hang_up else driver.finish(timeout_s=120)
        driver.process.wait(timeout=120)
        took = time.time() - sent
    results = json.loads((tmp_path / "results" / name / "results.json").read_text())
    assert driver.process.returncode == 1, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert results["interrupted"] is True and results["in_progress"] is False
    engines = lifetimes(log)
    assert all(start < sent + 0.5 for start, _ in engines), f"an engine started after the signal: {engines}"
    assert engine_processes(served) == set()
    return output, results, took, engines


def test_ctrl_c_during_a_teardown_stops_at_once(tmp_path):
    # The baseline's last stage is in: its engine is in its slow exit (EXIT_DELAY_S), the next trial not started.
    output, results, took, engines = run_and_interrupt(tmp_path, "int-teardown", "teardown")
    assert took < EXIT_DELAY_S + 20, took
    assert len(engines) == 1 and engines[0][1] is not None  # torn down, not swept
    first, *rest = results["all_results"]
    assert first["status"] == "completed"  # its last stage was in before the signal
    assert all(t["status"] == "interrupted" and not t["stages"] for t in rest), rest


def test_sigterm_between_trials_with_the_terminal_gone_starts_no_new_trial(tmp_path):
    # SIGTERM (a batch scheduler, `kill`, a pod stopping) is handled as Ctrl-C is, and the results
    # are written even though nothing can be printed any more.
    output, results, took, engines = run_and_interrupt(tmp_path, "int-between", "trial 1: done",
                                                       delay_s=0.0, sig=signal.SIGTERM, hang_up=True)
    assert took < 30, took
    assert len(engines) <= 2  # the baseline's, and the next trial's if it started before the signal
    first, *rest = results["all_results"]
    assert first["status"] == "completed"
    assert all(t["status"] == "interrupted" for t in rest), rest


def test_ctrl_c_during_confirmation_runs_no_more_of_them(tmp_path):
    output, results, took, engines = run_and_interrupt(tmp_path, "int-confirm", "confirm 1: start",
                                                       delay_s=0.0, num_samples=2, scheduler="none",
                                                       confirm_repeats=2)
    assert took < 30, took
    assert "confirm 2: start" not in output.split("confirm 1: start", 1)[1]
    # The baseline and 2 trials, and the confirmation run cut off if its engine started before the signal.
    assert len(engines) in (3, 4), engines
    assert {t["status"] for t in results["all_results"]} == {"completed"}


def test_engines_and_genai_bench_run_at_normal_priority(tmp_path):
    """Ray's workers run at niceness 15; what we measure must not inherit it."""
    path, served, _ = slow_task(tmp_path, "priority", delay_s=0.0, num_samples=1,
                                confirm_repeats=0, scheduler="none")
    with Driver(path) as driver:
        driver.read_until("trial 1: stage 1/3")
        [engine] = engine_processes(served)
        bench = genai_bench_processes(tmp_path)
        seen = {"engine": niceness(engine), "genai-bench": [niceness(pid) for pid in bench]}
        output = driver.finish(timeout_s=600)
    assert driver.process.returncode == 0, output[-3000:]
    assert seen["engine"] == 0 and bench and set(seen["genai-bench"]) == {0}, seen
