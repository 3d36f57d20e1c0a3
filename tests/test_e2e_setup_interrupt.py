"""Ctrl-C during the setup (here: while the engine binary is proven, before Ray starts) stops the
setup's processes and says that no trial ran: not "interrupted twice", never a hang."""

import signal
import sys
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Driver, engine_processes, until
from tests.test_e2e_interrupt import write_task

pytestmark = pytest.mark.e2e


def test_ctrl_c_during_the_setup_stops_it_and_says_no_trial_ran(tmp_path, monkeypatch):
    marker = f"INSTANT_ENGINE_CHECK_DELAY_S=600.{uuid.uuid4().int % 10**6}"  # the check never ends by itself
    monkeypatch.setenv(*marker.split("=", 1))
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # a driver that hangs shows where (SIGABRT below)
    path, _ = write_task(tmp_path, "early", 0.2, {"concurrency": [2]}, {"num_samples": 1})

    def checking() -> set[int]:
        found = set()
        for pid in engine_processes("autotuner-check"):
            try:
                if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    found.add(pid)
            except OSError:
                pass
        return found

    with Driver(path) as driver:
        assert until(lambda: checking() or driver.process.poll() is not None, 120) and checking(), \
            "the engine check never started:\n" + driver.finish(timeout_s=30)
        driver.process.send_signal(signal.SIGINT)
        try:
            output = driver.finish(timeout_s=60)
        except subprocess.TimeoutExpired:
            driver.process.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
            pytest.fail("the driver did not end within 60 s of the Ctrl-C:\n" + driver.finish(timeout_s=30)[-8000:])
    assert driver.process.returncode == 130, output[-3000:]
    assert "interrupted during the setup, before any trial" in output and "interrupted twice" not in output
    assert "Traceback" not in output, output[-3000:]
    assert until(lambda: not checking(), 10)
    assert not (tmp_path / "results" / "early" / "results.json").exists()


def test_ctrl_c_while_the_command_loads_its_modules_gives_one_line_not_a_traceback(tmp_path):
    # The first second or two of `autotuner run` imports pydantic, Ray and scipy: a Ctrl-C there
    # used to print a traceback of whatever module was loading.
    path, _ = write_task(tmp_path, "early", 0.2, {"concurrency": [2]}, {"num_samples": 1})
    command = Path(sys.executable).with_name("autotuner")  # as users start it (`python -m` ends by SIGINT: CPython's flag)
    process = subprocess.Popen([str(command), "run", str(path), "--no-dashboard"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def loading() -> bool:  # pydantic's compiled core mapped: the task model is being imported
            try:
                return b"pydantic_core" in Path(f"/proc/{process.pid}/maps").read_bytes()
            except OSError:
                return False

        assert until(loading, 60)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines()[-1].startswith("autotuner: interrupted"), output[-3000:]


def test_ctrl_c_while_ray_starts_waits_for_it_then_stops_cleanly(tmp_path):
    # Cut mid-start, Ray's half-made worker crashed the interpreter on its way out (SIGSEGV, seen
    # once in 20 Ctrl-Cs under load): the signal is held until Ray has started, then acted on.
    import psutil

    path, _ = write_task(tmp_path, "early", 0.2, {"concurrency": [2]}, {"num_samples": 1})
    with Driver(path) as driver:
        def ray_processes() -> list:
            try:
                return [child for child in psutil.Process(driver.process.pid).children(recursive=True)
                        if "gcs_server" in child.name() or "raylet" in child.name()]
            except psutil.Error:
                return []

        assert until(lambda: ray_processes() or driver.process.poll() is not None, 120) and ray_processes(), \
            "Ray never started:\n" + driver.finish(timeout_s=30)
        started = ray_processes()
        driver.process.send_signal(signal.SIGINT)
        output = driver.finish(timeout_s=90)
    assert driver.process.returncode == 130, output[-3000:]
    assert "SIGINT: stopping once Ray has started" in output, output[-3000:]
    assert "interrupted during the setup, before any trial" in output and "Traceback" not in output, output[-3000:]
    assert until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started), 30)
    assert not (tmp_path / "results" / "early" / "results.json").exists()
