"""What a run started, on disk, so `autotuner cleanup` can finish the job after a crash.

A run writes `runs/<run_id>.json` (the driver's PID and start time) while it lives; each local
engine writes `engines/<run_id>-<trial>.json` (its process group and start time) while it lives.
A record whose run is not alive any more is a leftover. Start times make a reused PID harmless.
Each record names its host: on a Ray cluster (whose nodes may share a home directory) a node acts
only on its own engines, and a run is judged alive or over only on its driver's host, which the
cleanup asks first (live_runs_here on every node).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from functools import lru_cache
from typing import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_autotuner.cluster.procs import group_alive, kill_group, start_time


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "autotuner"


@lru_cache(maxsize=1)
def host_id() -> str:
    """This machine, as PIDs are meaningful on it: its name and its boot (a PID means nothing on
    another machine, or on this one after a reboot)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


@dataclass(frozen=True)
class EngineRecord:
    run_id: str
    experiment: str
    trial_id: str
    pgid: int
    started: int | None
    argv0: str
    host: str = ""  # where the engine runs ("": this host, in records of earlier versions)
    run_host: str = ""  # where the run's driver runs

    def here(self) -> bool:
        return self.host in ("", host_id())

    @property
    def path(self) -> Path:
        return state_dir() / "engines" / f"{self.run_id}-{self.trial_id}.json"

    def save(self) -> None:
        _write(self.path, asdict(self))

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def register_run(run_id: str, experiment: str) -> Path:
    path = state_dir() / "runs" / f"{run_id}.json"
    _write(path, {"run_id": run_id, "experiment": experiment, "pid": os.getpid(), "started": start_time(os.getpid()),
                  "host": host_id()})
    return path


class InUse(Exception):
    """Another live run on this host holds the folder (its description in the message)."""


@contextlib.contextmanager
def exclusive(folders: list[str], run_id: str) -> Iterator[None]:
    """Hold `folders` (a run's results and storage) for this process while the block runs: a
    second run of the same task would move the first one's results aside under it and mix their
    trials. An flock, which the kernel lets go of when the process dies however it dies, so a
    killed run leaves no stale lock. Raises InUse, naming the holder. (This host only: a driver
    on another host sharing the folder is not seen.)"""
    held = []
    try:
        for folder in dict.fromkeys(folders):
            path = state_dir() / "locks" / (hashlib.sha256(folder.encode()).hexdigest()[:24] + ".lock")
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # not inherited by the engines and tools we start (PEP 446)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another run"
                handle.close()
                raise InUse(f"{folder} is in use by {holder}: wait for it to end, or stop it (Ctrl-C)") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"run {run_id} (pid {os.getpid()})")
            handle.flush()
            held.append(handle)
        yield
    finally:
        for handle in held:
            handle.close()  # lets go of the lock; the file stays (deleting it would race a waiting locker)


def run_alive(run_id: str) -> bool:
    path = state_dir() / "runs" / f"{run_id}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return start_time(record["pid"]) == record["started"]


def engine_records() -> list[EngineRecord]:
    records = []
    for path in sorted((state_dir() / "engines").glob("*.json")):
        try:
            records.append(EngineRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: nothing we could act on
    return records


def live_runs_here() -> list[tuple[str, list[str]]]:
    """[(this host, the runs whose driver is alive on it)]: gathered from every node of a cluster,
    what lets each node judge engines whose driver ran on another (see kill_leftover_engines)."""
    alive = []
    for path in sorted((state_dir() / "runs").glob("*.json")):
        try:
            host = json.loads(path.read_text()).get("host", "")
        except (OSError, ValueError, AttributeError):
            continue
        if host in ("", host_id()) and run_alive(path.stem):
            alive.append(path.stem)
    return [(host_id(), alive)]


def kill_leftover_engines(experiment: str | None = None, live: list[tuple[str, list[str]]] | None = None,
                          wait_s: float = 10.0) -> list[EngineRecord]:
    """Kill this host's engines whose run is over (all experiments, or one); return what was
    removed. A run is judged on its driver's host: `live` holds what those hosts said
    (live_runs_here from each node of the cluster; default: this host's alone). An engine whose
    driver's host did not answer is left (to its watchdog, or a later cleanup)."""
    live = live_runs_here() if live is None else live
    judges = {host for host, _ in live}
    alive = {run_id for _, run_ids in live for run_id in run_ids}
    removed = []
    for record in engine_records():
        judged = record.here() and (record.run_host or host_id()) in judges
        over = record.run_id not in alive and not run_alive(record.run_id)  # (a run started since `live`)
        if judged and over and (experiment is None or record.experiment == experiment):
            kill_group(record.pgid, record.started)
            removed.append(record)
    _forget_when_gone(removed, wait_s)
    return removed


def kill_run_engines(run_id: str, wait_s: float = 10.0) -> list[EngineRecord]:
    """Kill the engines of this run still recorded (trials that ended without finishing their
    teardown) and wait, up to `wait_s`, until no process of their groups is left."""
    removed = [record for record in engine_records() if record.run_id == run_id and record.here()]
    for record in removed:
        kill_group(record.pgid, record.started)
    _forget_when_gone(removed, wait_s)
    return removed


def _forget_when_gone(killed: list[EngineRecord], wait_s: float) -> None:
    """Wait, up to `wait_s` in all, for each killed group to go; forget the records of those gone.
    One still there keeps its record: `autotuner cleanup` or the next run find it again."""
    deadline = time.monotonic() + wait_s
    for record in killed:
        while group_alive(record.pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not group_alive(record.pgid):
            record.forget()


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)
