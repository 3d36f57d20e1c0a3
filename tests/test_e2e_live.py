"""The live progress panel as a user sees it: `autotuner run` in a pseudo-terminal, its output fed
to a terminal emulator (pyte), the screen read while the run goes. The engine is a stand-in that
answers after a short sleep (benchmarks/instant_engine.py), so the run is short and its trials last
long enough to be seen benchmarking."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pyte
import pytest
import yaml

from tests.conftest import instant_engine

pytestmark = pytest.mark.e2e
COLUMNS, LINES = 150, 40


def task_file(tmp_path: Path) -> Path:
    launcher = instant_engine(tmp_path / "instant-engine", delay_s=0.4, slots=False)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({
        "name": "live", "model": {"path": "builtin:smollm2", "name": "instant"},
        "engine": {"name": "llama.cpp", "binary": str(launcher), "args": {"threads": 1}},
        "search_space": {"parallel": [1, 2, 3]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [1, 2], "max_requests_per_stage": 4},
        "search": {"algorithm": "random", "seed": 1, "num_samples": 1, "scheduler": "none", "confirm_repeats": 0},
        "results_dir": str(tmp_path / "results"),
    }))
    return path


class Terminal:
    """A process on a pseudo-terminal of COLUMNS x LINES, its output shown on an emulated screen."""

    def __init__(self, argv: list[str]):
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()
        self.raw = bytearray()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("COLUMNS", None), env.pop("LINES", None)
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return  # the process closed its side
            if not data:
                return
            with self.lock:
                self.raw += data
                self.stream.feed(data)

    def display(self) -> list[str]:
        with self.lock:
            return list(self.screen.display)

    def wait_for(self, predicate, timeout_s: float) -> list[str] | None:
        """The first screen for which predicate(lines) holds, or None at the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            lines = self.display()
            if predicate(lines):
                return lines
            time.sleep(0.1)
        return None

    def finish(self, timeout_s: float) -> int:
        code = self.process.wait(timeout_s)
        self.reader.join(10)
        os.close(self.master)
        return code


def run_in_terminal(tmp_path: Path, *flags: str) -> Terminal:
    return Terminal([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(task_file(tmp_path)),
                     "--no-dashboard", *flags])


def panel(lines: list[str]) -> bool:
    """A trial benchmarking on the panel, under its header, and the overall line."""
    text = "\n".join(lines)
    return ("parameters" in text and "status" in text and "benchmarking" in text
            and "trials done" in text and "elapsed" in text)


def test_a_terminal_shows_the_running_trials_and_the_overall_line_redrawn_in_place(tmp_path):
    terminal = run_in_terminal(tmp_path)
    seen = terminal.wait_for(panel, 300)
    code = terminal.finish(300)
    assert code == 0, bytes(terminal.raw).decode(errors="replace")[-3000:]
    assert seen is not None, "\n".join(terminal.display())
    (Path(tmp_path) / "live-screen.txt").write_text("\n".join(line.rstrip() for line in seen).strip() + "\n")
    header = next(line for line in seen if "parameters" in line and "status" in line)
    row = next(line for line in seen if "benchmarking" in line)
    assert header.split() == ["trial", "parameters", "stage", "output_throughput", "status"]
    assert "/2" in row and ("parallel=" in row or "engine defaults" in row)
    overall = next(line for line in seen if "trials done" in line)
    assert overall.split()[0].endswith("/2")  # done of the budget: the baseline and one searched trial
    # Redrawn in place: the panel is not in the scrollback, once per refresh, as lines would be.
    final = "\n".join(terminal.display())
    assert final.count("trials done") == 0 and "Best: experiment" in final


def test_quiet_output_stays_a_line_per_event(tmp_path):
    terminal = run_in_terminal(tmp_path, "--quiet")
    code = terminal.finish(300)
    output = bytes(terminal.raw).decode(errors="replace")
    assert code == 0, output[-3000:]
    assert "trials done" not in output and "\x1b[2K" not in output  # no panel, no line erased
    assert "trial 1: start  engine defaults (baseline)" in output
    # Ray Tune's own output only with -v: no experiment box, no TensorBoard hint.
    assert "Configuration for experiment" not in output and "TensorBoard" not in output
    assert "stage 2/2" in output
