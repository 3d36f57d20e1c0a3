"""Process identity: a PID plus its start time names one process, even after the PID is reused."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import time
from typing import IO

import psutil


def start_time(pid: int) -> int | None:
    """Clock ticks since boot when `pid` started (field 22 of /proc/PID/stat), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[19])


def kill_group(pgid: int, started: int | None, sig: int = signal.SIGKILL) -> bool:
    """Signal the process group led by (pgid, started); never a group whose leader PID was reused.

    A PID stays reserved while any process still uses it as its group id, so when the leader is
    gone but members remain, the group is still ours.
    """
    current = start_time(pgid)
    if current is not None and started is not None and current != started:
        return False  # the PID now belongs to an unrelated process
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


KILL_WAIT_S = 10.0
GONE_POLL_S = 0.05


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs. Zombies do not count: they hold no memory
    or GPU, and where nothing reaps orphans (a container without an init) they never go."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False

# What a signal that ended a process means, and what to tell the user ({program}: its file name).
_SIGNALS = {
    signal.SIGILL: ("illegal instruction", "this {program} uses CPU instructions this machine cannot run"),
    signal.SIGSEGV: ("segmentation fault", "{program} crashed"),
    signal.SIGBUS: ("bus error", "{program} crashed; a model file truncated or changed while in use does this"),
    signal.SIGABRT: ("aborted", "{program} stopped on a failed internal check"),
    signal.SIGFPE: ("arithmetic error", "{program} crashed"),
    signal.SIGKILL: ("", "the kernel's OOM killer, or from outside"),
}


def exit_text(code: int) -> str:
    """How a process ended, in words: `exited with code 3`, `killed by SIGILL (illegal instruction)`."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return f"killed by signal {-code}"
    meaning = _SIGNALS.get(sig, ("", ""))[0]
    return f"killed by {sig.name}" + (f" ({meaning})" if meaning else "")


def exit_hint(code: int, program: str) -> str:
    """What the signal that ended `program` most likely means for the user, or ''."""
    if code >= 0:
        return ""
    try:
        return _SIGNALS.get(signal.Signals(-code), ("", ""))[1].format(program=os.path.basename(program))
    except ValueError:
        return ""


class ProcessGroup:
    """A child started in its own session, killed as a whole group by `stop()` or, should this
    process die first, by a watchdog (see cluster/watchdog.py).

    Everything a trial starts (engine, load generator) goes through here, so nothing it started
    can outlive it: not on an ASHA stop, an error, Ctrl-C, or a SIGKILL of the worker.
    """

    def __init__(self, argv: list[str], *, log_path: str | None, env: dict[str, str] | None = None,
                 cwd: str | None = None, stdin: int = subprocess.DEVNULL):
        """`log_path`: where its output goes (appended); None: this process's own stdout and stderr.
        `stdin`: subprocess.PIPE to write to it (`process.stdin`)."""
        self.argv = argv
        self.log_path = log_path
        # The watchdog first: the engine names itself to it before exec, so there is no moment
        # when the engine runs and nothing would stop it should this process die.
        self._watchdog_pipe = _start_watchdog()
        try:
            with open(log_path, "ab") if log_path else contextlib.nullcontext() as log:
                self.log_start = log.tell() if log else 0  # the log may hold an earlier process's lines: not ours
                self.process = subprocess.Popen(
                    argv, stdin=stdin, stdout=log, stderr=subprocess.STDOUT if log else None,
                    start_new_session=True, env=env, cwd=cwd,
                    preexec_fn=functools.partial(_in_child, self._watchdog_pipe.fileno()))
        except BaseException:  # nothing started (or it failed to exec): the watchdog sees EOF and ends
            self._watchdog_pipe.close()
            raise
        self.pgid = self.process.pid
        self.started = start_time(self.pgid)

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self, grace_s: float = 10.0) -> bool:
        """SIGTERM the group at once, give it `grace_s` to exit, then SIGKILL what is left
        (at once when `grace_s` is 0). True once every process of the group is gone: not only the
        one started (SGLang and vLLM hold the GPUs in child processes, which take a moment to die
        after the kill; the next trial given those GPUs must find them free)."""
        if grace_s > 0:
            kill_group(self.pgid, self.started, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.pgid, self.started, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        try:
            self.process.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            return False  # unkillable (D state); the watchdog stays armed on it
        while group_alive(self.pgid):
            if time.monotonic() >= deadline:
                return False  # the same, for a child
            time.sleep(GONE_POLL_S)
        self._watchdog_pipe.close()
        return True

    def listens_on(self, port: int) -> bool:
        """Whether a process of this group (the one started or a child: SGLang's and vLLM's API
        servers may be either) holds a listening TCP socket on `port`."""
        try:
            leader = psutil.Process(self.pgid)
            members = [leader, *leader.children(recursive=True)]
        except psutil.Error:  # gone
            return False
        for member in members:
            try:
                if any(conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
                       for conn in member.net_connections(kind="tcp")):
                    return True
            except psutil.Error:
                continue
        return False

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(self.log_start, log.tell() - 16384))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_LLAMA_CPP_ERROR = re.compile(r"^\S+ E ")  # llama.cpp's log lines: "<time> <level> <source> ..."


def telling_line(log: str) -> str:
    """The line of a log that most likely says what went wrong: a Python traceback's exception
    (SGLang's and vLLM's "RuntimeError: Not enough memory ...", logged after a line such as "Scheduler
    hit an exception: Traceback ..."), else the first line that mentions an error (later ones tend to
    be consequences, such as "exiting due to ..."), else the last line."""
    raised = _raised(log.splitlines())
    if raised:
        return raised[-300:]
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    problems = [line for line in lines if "error" in line.lower() or "exception" in line.lower()
                or line.startswith(("CRITICAL", "FATAL")) or _LLAMA_CPP_ERROR.match(line)]
    return (problems[:1] or lines[-1:] or ["no output"])[0][-300:]


def _raised(lines: list[str]) -> str | None:
    """The exception line of the first Python traceback: the first line after "Traceback (most
    recent call last):" that is not indented (its frames and their source lines are)."""
    for index, line in enumerate(lines):
        if "Traceback (most recent call last):" in line:
            return next((after.strip() for after in lines[index + 1:] if after.strip() and not after[0].isspace()), None)
    return None


def _in_child(watchdog_fd: int) -> None:
    """In the child before exec (after setsid: its PID is its group's id): name itself to the
    watchdog, then take niceness 0. Ray runs its workers at niceness 15 and children inherit it, so
    an engine or load generator started from a trial would yield the CPU to any other work on the
    node and measure slower than it is. Raising priority needs CAP_SYS_NICE (or RLIMIT_NICE);
    without it the process keeps the worker's niceness (see `niceness`)."""
    os.write(watchdog_fd, b"%d\n" % os.getpid())
    os.close(watchdog_fd)  # the owner's copy alone keeps the watchdog waiting
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass


def niceness(pid: int) -> int | None:
    """The niceness of `pid` (field 19 of /proc/PID/stat), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


def _start_watchdog() -> IO[bytes]:
    """A watchdog waiting for the PID of the group it guards on the returned pipe, then for the
    pipe's end (closed by its owner, or by the kernel when the owner dies)."""
    read_end, write_end = os.pipe()
    launcher = None
    try:
        launcher = subprocess.Popen([sys.executable, "-m", "llm_autotuner.cluster.watchdog"],
                                    stdin=read_end, stdout=subprocess.DEVNULL, start_new_session=True)
        if launcher.wait(timeout=30) != 0:  # it forks the real watchdog and exits at once
            raise OSError(f"the engine's watchdog did not start (exit code {launcher.returncode})")
        return os.fdopen(write_end, "wb")
    except BaseException:
        os.close(write_end)  # a watchdog that did start sees the pipe close with nothing to guard
        if launcher is not None and launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        raise
    finally:
        os.close(read_end)
