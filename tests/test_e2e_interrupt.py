"""Interrupting the driver while a trial benchmarks: Ctrl-C or SIGTERM stops the trials, tears the
engine down and writes results with the finished trials; a second Ctrl-C tears down at once. In
every case no engine is left and results.json holds every trial finished before the signal.
Real Ray and genai-bench; the engine is the instant stand-in (tests/conftest.py:instant_engine):
what is checked is the driver's way out, which an engine's speed does not change."""

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from llm_autotuner.cluster.records import engine_records
from tests.conftest import Driver, engine_processes, genai_bench_processes, instant_engine, until

NEVER_READY = Path(__file__).parent / "data" / "fake_engine_never_ready.py"

pytestmark = pytest.mark.e2e


def write_task(tmp_path, name, delay_s, benchmark, search):
    """A task of the instant stand-in engine (answers after `delay_s`); its path and served name."""
    served = f"int-{uuid.uuid4().hex[:8]}"
    task = {
        "name": name,
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "binary": str(instant_engine(tmp_path / "engine", delay_s=delay_s)),
                   "args": {"ctx-size": 2048, "threads": 1}},
        "search_space": {"parallel": [2, 4]},
        "benchmark": {"traffic_scenario": "D(64,32)"} | benchmark,
        "search": {"scheduler": "none", "seed": 0, "confirm_repeats": 0} | search,
        "results_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path, served


def start_and_interrupt(tmp_path, signals, gap_s=0.2, at="trial 2: stage 1/3", search=None, to_group=False):
    """Interrupt when the driver prints `at` (by default while the second trial benchmarks: the
    first has finished by then). `to_group`: signal the driver's whole process group, as `timeout`
    does, and check that every process the driver had started is gone soon after it exits."""
    path, served = write_task(tmp_path, "interrupted", 0.2, {"concurrency": [2, 4, 8], "max_requests_per_stage": 8},
                              search or {"num_samples": 4})
    with Driver(path, own_group=to_group) as driver:
        driver.read_until(at)
        assert engine_processes(served), f"an engine should be running at '{at}'"
        started = psutil.Process(driver.process.pid).children(recursive=True)  # Ray's processes, the trials'
        began = time.monotonic()
        for number, sig in enumerate(signals):
            if number:
                time.sleep(gap_s)
            if driver.process.poll() is not None:
                break
            if to_group:
                os.killpg(driver.process.pid, sig)
            else:
                driver.process.send_signal(sig)
        output = driver.finish(timeout_s=120)
        took = time.monotonic() - began
    if to_group:
        assert until(lambda: not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 15), \
            [p for p in started if p.is_running()]
    assert "Traceback" not in output, output[-3000:]
    assert engine_processes(served) == set()
    # The way out finished its sweep: no record of this run's engines is left for a later cleanup.
    assert [r for r in engine_records() if r.experiment == "interrupted"] == []
    results = json.loads((tmp_path / "results" / "interrupted" / "results.json").read_text())
    statuses = {r["experiment_id"]: r["status"] for r in results["all_results"]}
    assert statuses[1] == "completed"  # the baseline finished before the signal
    return driver.process.returncode, output, results, took


def test_ctrl_c_mid_stage_tears_down_and_keeps_finished_trials(tmp_path):
    # SIGTERM takes the same path: tests/test_e2e_lifecycle.py sends it between trials.
    code, output, results, _ = start_and_interrupt(tmp_path, [signal.SIGINT])
    assert code == 1, output[-3000:]
    assert "The run was interrupted" in output
    assert results["interrupted"] is True and results["in_progress"] is False
    statuses = {r["experiment_id"]: r["status"] for r in results["all_results"]}
    assert statuses[2] == "interrupted"
    assert results["best_result"]["experiment_id"] == 1


def test_sigterm_to_the_drivers_whole_process_group_stops_the_run_as_one_to_the_driver_does(tmp_path):
    # `timeout`, a service manager or a scheduler ending a job signals the whole process group.
    # The local Ray's processes are not in it: its GCS died of that SIGTERM, and the driver, stopping
    # the run, waited 60 s for it and ended without the summary (results.json left in progress).
    code, output, results, took = start_and_interrupt(tmp_path, [signal.SIGTERM], to_group=True)
    assert code == 1, output[-3000:]
    assert "The run was interrupted" in output
    assert results["interrupted"] is True and results["in_progress"] is False
    assert took < 30, took


def test_a_second_ctrl_c_tears_down_at_once(tmp_path):
    code, output, results, took = start_and_interrupt(tmp_path, [signal.SIGINT, signal.SIGINT])
    assert code == 130, output[-3000:]
    assert "interrupted twice: engines killed without waiting" in output
    assert took < 30
    # Valid, with the trial that had finished (written when it did, or on the way out).
    assert {r["experiment_id"] for r in results["all_results"]} <= {1, 2}


def test_more_signals_do_not_cut_the_way_out_short(tmp_path):
    # An impatient user presses Ctrl-C again and again (or a supervisor sends SIGTERM after it):
    # the signals after the second only say that the cleanup is under way; it still finishes
    # (start_and_interrupt: no engine and no record of one left, no traceback).
    code, output, results, took = start_and_interrupt(
        tmp_path, [signal.SIGINT, signal.SIGINT] + [signal.SIGINT, signal.SIGTERM] * 100, gap_s=0.01)
    # The line printed after the cleanup. Python puts back the default handlers as it exits: a
    # signal that lands there, after everything is done, ends the process by it.
    assert "interrupted twice: engines killed without waiting" in output
    assert code in (130, -signal.SIGINT, -signal.SIGTERM), output[-3000:]
    assert output.count("cleaning up what this run started") <= 1
    assert took < 30


def test_a_second_ctrl_c_during_the_confirmation_keeps_its_finished_runs(tmp_path):
    # The search is over and two re-measurements have finished (two finalists' first: the best two
    # configs and the baseline, which may be one of them) when the user stops the run twice: those
    # runs are in results.json.
    search = {"num_samples": 2, "scheduler": "none", "seed": 0, "confirm_top_k": 2, "confirm_repeats": 2}
    code, output, results, _ = start_and_interrupt(tmp_path, [signal.SIGINT, signal.SIGINT],
                                                   at="confirm 3: stage 1/3", search=search)
    assert code == 130, output[-3000:]
    assert results["in_progress"] is True  # the final write never came
    assert [r["status"] for r in results["all_results"]] == ["completed"] * 3  # the baseline and 2 samples
    runs = [len(row["runs"]) for row in results["confirmation"]]
    assert sorted(runs, reverse=True)[:2] == [1, 1] and sum(runs) == 2, results["confirmation"]
    assert any(row["baseline"] for row in results["confirmation"])
    assert results["selection"]["chosen_on"] == "confirmation"


def loading_engine(path):
    """The instant stand-in when the driver's engine check starts it; as a trial's engine (given
    LOADING_FOREVER by the task's engine.env) it answers /health "loading" for ever, as an engine
    loading a big model."""
    instant = instant_engine(path.parent / "instant-engine")
    path.write_text(f"#!{sys.executable}\nimport os, runpy, sys\n"
                    f"if os.environ.get('LOADING_FOREVER'):\n"
                    f"    runpy.run_path({str(NEVER_READY)!r}, run_name='__main__')\n"
                    f"os.execv({str(instant)!r}, [{str(instant)!r}, *sys.argv[1:]])\n")
    path.chmod(0o755)
    return path


def processes_of(served):
    """PIDs of the processes whose argv names the served model: the engine, whatever runs it
    (genai-bench's arguments come on its stdin: tests/conftest.py genai_bench_processes)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and served in (proc / "cmdline").read_bytes().decode(errors="replace").split("\0"):
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def test_genai_bench_started_with_an_engine_that_fails_to_start_is_gone_before_the_control_start(tmp_path):
    """A trial starts genai-bench with its engine (to import itself while the engine starts). When
    the engine fails at start, the trial tears down and then starts the engine with the task's own
    flags only, to tell a bad config from a bad setup: genai-bench must be gone by then, not left
    waiting until the trial's process ends. The engine here refuses the tuned --parallel at once
    and, without it, loads for ever (the control start then waits deployment.ready_timeout_s)."""
    path, _ = write_task(tmp_path, "failed-start", 0.05, {"concurrency": [2], "max_requests_per_stage": 2},
                         {"num_samples": 1, "baseline": False})
    engine = tmp_path / "refusing-engine"
    instant = instant_engine(tmp_path / "instant-engine")
    engine.write_text(f"#!{sys.executable}\nimport os, runpy, sys\n"
                      f"if os.environ.get('REFUSING') and '--parallel' in sys.argv:\n"
                      f"    sys.exit('error: invalid argument: --parallel')\n"
                      f"if os.environ.get('REFUSING'):\n"
                      f"    runpy.run_path({str(NEVER_READY)!r}, run_name='__main__')\n"
                      f"os.execv({str(instant)!r}, [{str(instant)!r}, *sys.argv[1:]])\n")  # the driver's check
    engine.chmod(0o755)
    task = yaml.safe_load(path.read_text())
    task["engine"] |= {"binary": str(engine), "env": {"REFUSING": "1"}}
    task["deployment"] = {"ready_timeout_s": 15}
    path.write_text(yaml.safe_dump(task))
    with Driver(path) as driver:
        control = tmp_path / "results" / "failed-start" / "trials"
        assert until(lambda: any(control.glob("*/control")), 300), "the control start never began"
        began = time.monotonic()
        while time.monotonic() - began < 5:  # the control engine loads (for 15 s)
            assert genai_bench_processes(tmp_path) == set(), "genai-bench outlived its trial's engine"
            time.sleep(0.05)
        output = driver.finish(timeout_s=120)
    assert "the engine fails at start whatever its tuned flags" in output, output[-3000:]
    assert genai_bench_processes(tmp_path) == set()


@pytest.mark.parametrize("wait", ["ready", "warm-up", "stage"])
def test_a_trial_waiting_on_a_slow_engine_tears_it_down_itself_when_stopped(tmp_path, wait):
    """Ray asks a stopped trial to end only once its current step returns, and gives it 10 s at
    the run's end. Here the engine loads for ever, or each answer takes 40 s: the trial must see
    the stop while it waits and tear its engine down itself (its timeline's `stopped`), not leave
    it to the watchdog and the driver's sweep ("its teardown was cut short")."""
    path, served = write_task(tmp_path, "interrupted-slow", 40,
                              {"concurrency": [2], "max_requests_per_stage": 2,
                               "warmup_requests": 0 if wait == "stage" else None},
                              {"num_samples": 1, "baseline": False})
    if wait == "ready":
        task = yaml.safe_load(path.read_text())
        task["engine"] |= {"binary": str(loading_engine(tmp_path / "loading-engine")), "env": {"LOADING_FOREVER": "1"}}
        path.write_text(yaml.safe_dump(task))
    with Driver(path) as driver:
        driver.read_until("trial 1: start")
        deadline = time.monotonic() + 60
        while not processes_of(served):
            assert time.monotonic() < deadline, "the engine never started"
            time.sleep(0.2)
        time.sleep(3)  # the trial waiting on the engine's start or on its answers
        driver.process.send_signal(signal.SIGINT)
        output = driver.finish(timeout_s=120)
    assert driver.process.returncode == 1, output[-3000:]
    assert "teardown was cut short" not in output, output[-3000:]
    assert processes_of(served) == set() and genai_bench_processes(tmp_path) == set()
    [timeline] = (tmp_path / "results" / "interrupted-slow" / "trials").glob("*/timeline.json")
    marks = json.loads(timeline.read_text())
    assert "stopped" in marks and ("engine_ready" in marks) is (wait != "ready"), marks
    results = json.loads((tmp_path / "results" / "interrupted-slow" / "results.json").read_text())
    assert [r["status"] for r in results["all_results"]] == ["interrupted"]


def test_the_time_budget_ending_reaches_a_trial_waiting_on_its_engine(tmp_path):
    """The time budget ends the run while the trial waits on 60-s answers: like a signal's, the
    budget's stop must reach the trial within a second, so it tears its engine down itself instead
    of having Ray cut its teardown short 10 s later."""
    path, served = write_task(tmp_path, "budget-slow", 60,
                              {"concurrency": [2], "max_requests_per_stage": 2, "warmup_requests": 0},
                              {"num_samples": 1, "baseline": False, "time_budget_s": 20})
    began = time.monotonic()
    with Driver(path) as driver:
        output = driver.finish(timeout_s=150)
    # Ray's start, the 20-s budget, the teardown and the results (a busy machine's start-up included):
    # nothing waited for the first answer, 60 s into the stage.
    assert time.monotonic() - began < 100, output[-3000:]
    assert "Traceback" not in output and "teardown was cut short" not in output, output[-3000:]
    assert processes_of(served) == set() and genai_bench_processes(tmp_path) == set()
    [timeline] = (tmp_path / "results" / "budget-slow" / "trials").glob("*/timeline.json")
    marks = json.loads(timeline.read_text())
    assert "stopped" in marks and "engine_gone" in marks, marks
    results = json.loads((tmp_path / "results" / "budget-slow" / "results.json").read_text())
    assert [r["status"] for r in results["all_results"]] == ["stopped-by-budget"]
    assert results["interrupted"] is False
