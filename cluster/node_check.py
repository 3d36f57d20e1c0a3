"""What a Ray node must have to run trials (the engine, genai-bench, the model's files), checked
on that node: cluster/nodes.py runs it on every node before the first trial, and each trial
placed on a node that joined the cluster later runs it there first (trainables/trial.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from llm_autotuner.errors import SetupError

if TYPE_CHECKING:
    from llm_autotuner.cluster.storage import Storage


@dataclass(frozen=True)
class NodeCheck:
    """What a node must have to run trials, checked on that node: before the first trial on every
    node of the cluster (`check_nodes`), and by a trial that finds itself on a node that joined
    later (`run_here`)."""

    executable: str | None = None  # the engine's program, there as a file or on PATH
    modules: tuple[str, ...] = ()  # Python modules trials run there (genai-bench, an engine's launcher)
    files: tuple[tuple[str, str], ...] = ()  # (what, path): the driver's files trials read there
    prove_llama_server: bool = False  # find (or build) a llama-server that serves on that node
    task_binary: str | None = None  # the task's engine.binary, for the llama-server proof
    # The run's storage, and a file the driver wrote there for the run: a node that does not see
    # it would keep its trials' files on its own disk (Ray checks only when a trial saves a
    # checkpoint, and we keep none).
    storage: Storage | None = None
    storage_marker: str = ""

    def run_here(self, progress: Callable[[str], None] = print) -> str | None:
        """Check this node; the llama-server proven on it (None: no binary is proven per node).
        Raises SetupError saying what is missing."""
        if self.executable and not shutil.which(self.executable):
            raise SetupError(f"the engine {self.executable} is not installed there (not an executable file or on PATH)")
        for module in self.modules:
            if importlib.util.find_spec(module) is None:  # found, not imported: genai-bench patches gevent in
                package = module.replace("_", "-")
                raise SetupError(f"{package} is not installed there (pip install {package})")
        for what, path in self.files:
            if not os.path.exists(path):
                raise SetupError(f"{what} {path} is not there: a trial on that node reads it at the path the driver "
                                 "found it at (put it there on every node, or on a filesystem they share)")
        if self.storage is not None and not self.storage.exists(self.storage.path(self.storage_marker)):
            raise SetupError(f"storage: {self.storage.uri} is not the same storage there as on the driver (a folder "
                             "on the driver's disk?); give storage.path a folder every node mounts, or a URI such "
                             "as s3://bucket/prefix")
        if not self.prove_llama_server:
            return None
        from llm_autotuner.cluster.llamacpp_setup import ensure_llama_server

        return str(ensure_llama_server(self.task_binary, progress=progress))
