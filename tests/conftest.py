"""Shared fixtures: the real CPU engine (llama-server + SmolLM2), prepared by `make test`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import benchmarks.instant_engine as instant_engine_module
from llm_autotuner.cluster import llamacpp_setup


# A test run started in the background of a non-interactive shell (`nohup ... &`, some CI runners)
# inherits SIGINT ignored, and an ignored signal stays ignored across exec: every driver the tests
# start would then ignore the Ctrl-C they send (seen: two tests of test_e2e_setup_interrupt failed
# in such a run, their drivers never interrupted). The tests run with what a terminal gives.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items):
    """End-to-end tests first, in their order. `make test`'s workers take a file at a time in this
    order: the long files then start early and the many short unit-test files fill in at the end,
    instead of a long file handed out last running on after every other worker is done."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(scope="session")
def llama_server() -> str:
    return str(llamacpp_setup.ensure_llama_server())


@pytest.fixture(scope="session")
def smollm2() -> str:
    return str(llamacpp_setup.smollm2_gguf())


@pytest.fixture(scope="session")
def tokenizer(smollm2) -> str:
    return str(llamacpp_setup.ensure_tokenizer(Path(smollm2)))


def until(condition, timeout_s: float) -> bool:
    """Whether `condition()` held within `timeout_s` (asked every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


INSTANT_ENGINE = Path(instant_engine_module.__file__).resolve()


def instant_engine(path: Path, delay_s: float = 0.05, slots: bool = True, answer: str = "stream") -> Path:
    """An executable at `path` that runs benchmarks/instant_engine.py, a stand-in for llama-server
    that answers after `delay_s` (with `slots`: at most --parallel requests at once, as llama-server's
    slots; `answer`: "one-token", "together" or "error" for answers genai-bench has no statistic of).
    For the tests whose property is the tuner's control flow (interrupts, teardowns, resume,
    searchers, Kubernetes): the real engine's minutes of generation would prove nothing more there."""
    return instant_engine_module.launcher(path, delay_s, slots, answer)


def genai_bench_processes(root: Path) -> set[int]:
    """PIDs of running genai-benches (our wrapper of it) working in a folder under `root`: a trial
    starts genai-bench before its engine, so its command line names no engine."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes()
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if b"llm_autotuner.trainables.timed_genai_bench" in argv and Path(cwd).is_relative_to(root):
                pids.add(int(proc.name))
    return pids


def engine_processes(marker: str) -> set[int]:
    """PIDs of running engines (llama-server, or the instant stand-in) whose argv holds `marker`
    (a unique served name)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            engine = argv[0].endswith("llama-server") or (len(argv) > 1 and argv[1] == str(INSTANT_ENGINE))
            if engine and marker in argv:
                pids.add(int(proc.name))
    return pids


class Driver:
    """`autotuner run TASK` in a subprocess, its output read line by line (stderr merged)."""

    def __init__(self, task_path: Path, *extra: str, dashboard: bool = False, own_group: bool = False):
        """`own_group`: the driver leads a process group of its own, as under `timeout` (which
        signals its whole group), instead of being in the test's."""
        # Without the Ray dashboard unless asked (as the README advises for CI): its processes take
        # a share of 2 cores that the run's own would otherwise have.
        extra = extra if dashboard else ("--no-dashboard", *extra)
        self.process = subprocess.Popen([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(task_path), *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        process_group=0 if own_group else None)
        self.lines: list[str] = []

    def read_until(self, marker: str, timeout_s: float = 300) -> None:
        """Read until a line holds `marker`; fail the test with the output if it never comes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            self.lines.append(line)
            if marker in line:
                return
            if not line and self.process.poll() is not None:
                break
        pytest.fail(f"the run never printed {marker!r}:\n" + "".join(self.lines))

    def finish(self, timeout_s: float = 300) -> str:
        """Wait for the end; all the output."""
        rest, _ = self.process.communicate(timeout=timeout_s)
        return "".join(self.lines) + rest

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
