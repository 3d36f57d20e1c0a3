"""Where a run keeps what its trials produce: one filesystem every Ray node reaches.

Ray Tune's experiment state (`tune/`, `confirm/`) and each trial's files (`trials/<id>/`: engine
log, genai-bench's files, timeline) live under `<storage>/<task>/`. The storage is the results
folder by default; on a cluster of several machines, a folder every node mounts at the same path,
or an object store (s3://, gs://) or any pyarrow filesystem (`storage.filesystem`).

On a local filesystem a trial writes straight into its folder there. Elsewhere it writes on its
own node's disk and uploads, with the API key masked: its timeline after each stage, everything
when it ends. Ray gives a phase's last trials some 10 s to stop (tune_controller.py,
`_cleanup_stopping_actors`), which can cut an upload short, so after each phase a task on every
node uploads what such trials left (`collect`), and the driver then files each attempt of a trial
under its name (`assemble`): the attempt whose key the trial's last reports carry becomes
`trials/<id>`, the others `trials/<id>.attempt-N`, as a local run names them.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from llm_autotuner.cluster.procs import start_time
from llm_autotuner.errors import TaskError
from llm_autotuner.secrets import scrubbed
from llm_autotuner.task import Task

INCOMING = ".incoming"  # trials/.incoming/<trial id>/<attempt key>/: uploads not yet filed
# Where trials write before they upload, on each node (one folder per storage, trial and attempt);
# the user's own (mode 0700): engine logs, and genai-bench's files until they are scrubbed.
LOCAL_ROOT = Path(tempfile.gettempdir()) / f"autotuner-trials-{os.getuid()}"
OWNER_FILE = "owner.json"  # in each local attempt folder: the process writing it, and where it goes
COMPLETE = ".complete"  # the last object of an attempt's upload: its key; only complete attempts are filed
CLAIMED = ".collecting-"  # a leftover folder renamed by the collector uploading it (nodes may share /tmp)


@dataclass(frozen=True)
class Storage:
    filesystem: pafs.FileSystem
    root: str  # <storage>/<task>, a path inside `filesystem`
    uri: str  # the same, as people write it

    @property
    def direct(self) -> bool:
        """Whether trials write straight into the storage (a local or mounted folder)."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root else "/".join(parts)

    def where(self, *parts: str) -> str:
        """A path under the storage, as people write it."""
        return "/".join([self.uri.rstrip("/"), *parts])

    @property
    def ray_filesystem(self) -> pafs.FileSystem | None:
        """The filesystem to hand Ray: none for a local folder, given as a path as Ray expects it."""
        return None if self.direct else self.filesystem

    def ray_storage(self) -> dict:
        """RunConfig's storage arguments."""
        return {"storage_path": self.root, "storage_filesystem": self.ray_filesystem}

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound

    def read_text(self, path: str) -> str | None:
        try:
            with self.filesystem.open_input_stream(path) as stream:
                return stream.read().decode(errors="replace")
        except (FileNotFoundError, OSError):
            return None

    def write_text(self, path: str, text: str) -> None:
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.filesystem.open_output_stream(path) as stream:
            stream.write(text.encode())

    def listdir(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        return sorted(info.base_name for info in self.filesystem.get_file_info(pafs.FileSelector(path)))

    def upload(self, local: Path, destination: str, names: list[str] | None = None) -> None:
        """The files under `local` (or only those `names`) copied to `destination`, the API key masked."""
        files = (sorted(p for p in local.rglob("*") if p.is_file() and not p.is_symlink() and p.name != OWNER_FILE)
                 if names is None else [local / name for name in names if (local / name).is_file()])
        made: set[str] = set()
        for file in files:
            target = f"{destination}/{file.relative_to(local).as_posix()}"
            folder = target.rsplit("/", 1)[0]
            if folder not in made:
                self.filesystem.create_dir(folder, recursive=True)
                made.add(folder)
            with self.filesystem.open_output_stream(target) as stream:
                stream.write(scrubbed(file.read_bytes()))

    def move(self, source: str, destination: str) -> None:
        try:
            self.filesystem.move(source, destination)
        except (OSError, NotImplementedError):  # object stores move no directory: copy, then delete
            pafs.copy_files(source, destination, source_filesystem=self.filesystem,
                            destination_filesystem=self.filesystem)
            self.filesystem.delete_dir(source)

    # The run's stop, where every trial sees it: a trial that Ray was starting as the run was
    # stopped reads it before it deploys anything (TrialTrainable.step).
    def request_stop(self) -> None:
        self.write_text(self.path("trials", "STOP"), "")

    def stop_requested(self) -> bool:
        return self.exists(self.path("trials", "STOP"))

    def clear_stop(self) -> None:
        if self.stop_requested():
            self.filesystem.delete_file(self.path("trials", "STOP"))


def storage_for(task: Task) -> Storage:
    """The task's storage (its results folder unless `storage` says otherwise), reached once to
    prove it. Raises TaskError."""
    given = task.storage
    if given is None or (not given.path and not given.filesystem):
        return Storage(pafs.LocalFileSystem(), str(task.results_path.absolute()), str(task.results_path.absolute()))
    if given.filesystem:
        module, _, name = given.filesystem.partition(":")
        try:
            filesystem = getattr(importlib.import_module(module), name)()
        except Exception as error:  # the user's code: whatever it raises is one line here
            raise TaskError(f"storage.filesystem: {given.filesystem} failed: {type(error).__name__}: {error}") from None
        if not isinstance(filesystem, pafs.FileSystem):
            raise TaskError(f"storage.filesystem: {given.filesystem} returned {type(filesystem).__name__}, "
                            f"not a pyarrow filesystem")
        if isinstance(filesystem, pafs.LocalFileSystem):
            base = str(Path(given.path).expanduser().absolute())
            uri = base
        else:
            base = given.path.strip("/")
            prefix = getattr(filesystem, "base_path", None)  # a SubTreeFileSystem's folder
            uri = (f"{filesystem.type_name}:{prefix.rstrip('/')}/{base}" if prefix is not None
                   else f"{filesystem.type_name}://{base}").rstrip("/")
    elif "://" in given.path:
        try:
            filesystem, base = pafs.FileSystem.from_uri(given.path)
        except (OSError, ValueError, ImportError) as error:
            raise TaskError(f"storage.path: {shown(given.path)}: {error}") from None
        uri = f"{urlsplit(given.path).scheme}://{base}"  # no credentials or options: it is shown and logged
    else:
        filesystem, base = pafs.LocalFileSystem(), str(Path(given.path).expanduser().absolute())
        uri = base
    root = "/".join(p for p in (base.rstrip("/"), task.name) if p)
    if isinstance(filesystem, pafs.LocalFileSystem) and not root.startswith("/"):
        root = "/" + root
    try:
        filesystem.get_file_info(base or "/")
    except OSError as error:
        raise TaskError(f"storage: cannot reach {uri}: {str(error).splitlines()[0]}") from None
    return Storage(filesystem, root, f"{uri.rstrip('/')}/{task.name}")


def shown(uri: str) -> str:
    """`uri` without the credentials it may hold (user:secret@host), for a message."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}" if parts.scheme else uri


class TrialFolder:
    """A trial's folder: `path`, where it writes; `key`, which attempt this is (None when it writes
    straight into the storage); `sync(names)` uploads those files now; `close()` uploads the rest."""

    def __init__(self, storage: Storage, trial_id: str, node_id: str = "", run_id: str = "") -> None:
        self.storage, self.trial_id = storage, trial_id
        if storage.direct:
            self.key = None
            self.path = fresh_folder(Path(storage.path("trials", trial_id)))
            return
        # A key that orders attempts in time and cannot collide across nodes.
        self.key = f"{time.time_ns()}-{node_id[:8] or 'local'}"
        self.destination = storage.path("trials", INCOMING, trial_id, self.key)
        LOCAL_ROOT.mkdir(mode=0o700, exist_ok=True)
        self.path = LOCAL_ROOT / safe_name(storage.uri) / trial_id / self.key
        for _ in range(3):  # a collector may remove the emptied trial folder between our two mkdirs
            try:
                self.path.mkdir(parents=True)
                break
            except FileNotFoundError:
                continue
        (self.path / OWNER_FILE).write_text(json.dumps({
            "pid": os.getpid(), "started": start_time(os.getpid()), "destination": self.destination,
            "run_id": run_id}))

    def sync(self, names: list[str]) -> None:
        """Best effort: a storage that does not answer now fails no measurement."""
        if self.key is not None:
            try:
                self.storage.upload(self.path, self.destination, names)
            except OSError:
                pass

    def close(self) -> None:
        """Everything uploaded, then the local folder removed; if the storage fails, the folder is
        left for the collector (`collect_here`), and the trial's end is not held up."""
        if self.key is not None:
            try:
                _upload_and_remove(self.storage, self.path, self.destination)
            except OSError as error:
                print(f"[autotuner] trial {self.trial_id}: its files stay on this node for now, the upload failed: "
                      f"{str(error).splitlines()[0]}", flush=True)


def fresh_folder(path: Path) -> Path:
    """`path`, empty. A restarted trial (--resume) keeps its id; its earlier attempt's files
    (genai-bench's stage results among them) are moved to `<id>.attempt-N` so that nothing of the
    killed attempt can be read as this one's."""
    if path.exists():
        attempt = _next_attempt([p.name for p in path.parent.iterdir()], path.name)
        path.rename(path.with_name(f"{path.name}.attempt-{attempt}"))
    path.mkdir(parents=True)
    return path


def _next_attempt(names: list[str], trial_id: str) -> int:
    """The number after the highest `<trial_id>.attempt-N` among `names`."""
    numbers = [int(name.rsplit("-", 1)[1]) for name in names
               if name.startswith(f"{trial_id}.attempt-") and name.rsplit("-", 1)[1].isdigit()]
    return max(numbers, default=0) + 1


def safe_name(uri: str) -> str:
    """One folder name per storage (its URI names it among all others)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", uri.strip("/")) or "_"


def _upload_and_remove(storage: Storage, local: Path, destination: str) -> None:
    storage.upload(local, destination)
    storage.write_text(f"{destination}/{COMPLETE}", destination.rsplit("/", 1)[1])  # the last object
    shutil.rmtree(local, ignore_errors=True)
    # The trial's folder too, once it holds no other attempt, and then the storage's, once it holds
    # no other trial: else each leaves one in /tmp. (A trial making its folder meanwhile retries.)
    for folder in (local.parent, local.parent.parent):
        try:
            folder.rmdir()
        except OSError:
            break


def collect_here(storage: Storage, run_id: str, earlier: str | None) -> list[str]:
    """On this node: upload the attempt folders of this storage whose writer has died without
    uploading them (a trial cut off at a phase's end, killed, its worker lost). Those of an earlier
    run (its driver killed before it collected them) go to that run's folder, moved aside to
    `earlier` when this run started; with no such folder (a resumed run) they are this run's."""
    if storage.direct:
        return []
    lines = []
    for owner in sorted((LOCAL_ROOT / safe_name(storage.uri)).glob(f"*/*/{OWNER_FILE}")):
        folder = owner.parent
        try:
            written_by = json.loads(owner.read_text())
        except (OSError, ValueError):
            continue
        key, _, collector = folder.name.partition(CLAIMED)  # collector: "<pid>-<start time>" of who claimed it
        pid, _, started = collector.partition("-")
        if _alive(written_by) or (pid.isdigit() and _alive({"pid": int(pid), "started": int(started or 0)})):
            continue
        # Claimed by a rename first: nodes that share a /tmp (one machine) must not both take it.
        claimed = folder.with_name(f"{key}{CLAIMED}{os.getpid()}-{start_time(os.getpid()) or 0}")
        try:
            folder.rename(claimed)
        except OSError:
            continue
        destination = written_by["destination"]
        if earlier and written_by.get("run_id") != run_id and destination.startswith(storage.root + "/"):
            destination = earlier + destination[len(storage.root):]
        _upload_and_remove(storage, claimed, destination)
        lines.append(f"uploaded the files of trial {folder.parent.name} that its worker left on "
                     f"{os.uname().nodename} to {destination}")
    return lines


def _alive(process: dict) -> bool:
    """Whether the process (pid and start time, so that a reused pid is not taken for it) runs."""
    now = start_time(process["pid"]) if process.get("pid") else None
    return now is not None and now == process.get("started")


def assemble(storage: Storage, chosen: dict[str, str]) -> None:
    """File every completely uploaded attempt under its trial's name: the one in `chosen` (trial id
    -> the key its last reports carry) or else the newest (a `trials/<id>` filed earlier included)
    becomes `trials/<id>`; the others become `<id>.attempt-N`, oldest first. An attempt still being
    uploaded (no COMPLETE yet) is left where it is."""
    incoming, trials = storage.path("trials", INCOMING), storage.path("trials")
    for trial_id in storage.listdir(incoming):
        keys = [key for key in storage.listdir(f"{incoming}/{trial_id}")
                if storage.exists(f"{incoming}/{trial_id}/{key}/{COMPLETE}")]
        if not keys:
            continue
        current = f"{trials}/{trial_id}"
        filed = storage.read_text(f"{current}/{COMPLETE}") if storage.exists(current) else None
        candidates = keys + ([filed] if filed else [])
        winner = chosen[trial_id] if chosen.get(trial_id) in candidates else max(candidates, key=_key_order)
        place = {key: f"{incoming}/{trial_id}/{key}" for key in keys}
        if storage.exists(current):
            place[filed or ""] = current
        for key in sorted((k for k in place if k != winner), key=_key_order):
            storage.move(place[key], f"{trials}/{trial_id}.attempt-{_next_attempt(storage.listdir(trials), trial_id)}")
        if winner != filed:
            storage.move(place[winner], current)
        if not storage.listdir(f"{incoming}/{trial_id}"):
            storage.filesystem.delete_dir(f"{incoming}/{trial_id}")
    if storage.exists(incoming) and not storage.listdir(incoming):
        storage.filesystem.delete_dir(incoming)


def _key_order(key: str) -> int:
    head = key.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def move_aside(storage: Storage, stamp: str) -> str | None:
    """An earlier run's folder in the storage moved to `<task>.<stamp>`; its path, or None."""
    if not storage.listdir(storage.root):
        return None
    aside = f"{storage.root}.{stamp}"
    try:
        storage.move(storage.root, aside)
    except OSError as error:
        raise TaskError(f"storage: {storage.uri} holds an earlier run that could not be moved aside ({error}); "
                        f"continue it with --resume or remove it") from None
    return aside

