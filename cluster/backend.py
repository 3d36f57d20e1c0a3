"""The backend interface: where a task's engines run, as the driver and the trials see it.

A backend is one module of cluster/ (local.py, ome.py) with one `Backend` subclass. Its
`deployer()` deploys one trial's engine (cluster/deployer.py); the rest is what the driver needs
around the trials: what a trial holds in Ray, what a dry run would deploy, and how to remove what
runs left behind. Adding a backend is that module, its settings in the task model
(llm_autotuner/task.py) and a line in BACKENDS.
"""

from __future__ import annotations

import importlib
from typing import Any

from llm_autotuner.cluster.deployer import Deployer, EngineSpec
from llm_autotuner.cluster.engines import EngineProfile, EngineSetup
from llm_autotuner.task import Task

# deployment.backend -> "module:Class", imported when used: the kubernetes client only for OME.
BACKENDS = {"local": "llm_autotuner.cluster.local:LocalBackend", "ome": "llm_autotuner.cluster.ome:OmeBackend"}


class Backend:
    # An engine that fails at start is started once more with only the task's fixed flags, to tell a
    # bad config from a broken setup: worth it where a start costs seconds, not a pod's scheduling.
    control_start = True

    def deployer(self) -> Deployer:
        """What deploys one trial's engine, waits until it serves, and tears it down."""
        raise NotImplementedError

    def claim(self, engine: dict[str, float], client_cpus: float, node_cpus: int) -> dict[str, float]:
        """What one trial holds in Ray, given its engine's demand (EngineProfile.resources) and the
        CPUs of its load generator."""
        raise NotImplementedError

    # By default engines run from files on the Ray nodes (a binary, a model), which the engine's
    # profile checks and sets up (cluster/engines.py); a backend whose engines come in an image
    # overrides these three.
    def check(self, profile: EngineProfile, task: Task) -> None:
        """The files the task names, before anything is built or started (validate, run)."""
        profile.check(task.model, task.engine)

    def setup(self, profile: EngineProfile, task: Task, prove_here: bool) -> EngineSetup:
        """What every trial's engine uses, found (or built) once before the run starts Ray.
        `prove_here`: the trials run on this machine, so its binary is proven here."""
        return profile.setup(task.model, task.engine, prove_here)

    def setup_nodes(self, profile: EngineProfile, task: Task, skip: set[str]) -> dict[str, str]:
        """On a Ray cluster: Ray node id -> the engine binary proven on that node."""
        return profile.setup_nodes(task.engine, skip)

    def offers(self) -> dict[str, float]:
        """Custom Ray resources the trials claim that no node has by itself: a local Ray is started
        with them, a Ray cluster must offer them."""
        return {}

    def prepare(self, served_name: str) -> list[str]:
        """Before the first trial: create what the task asks to exist (a serving runtime). What was
        done, one line each."""
        return []

    def settle(self, run_id: str) -> list[str]:
        """After a phase of the run: remove whatever of this run is left and wait until it is gone,
        so nothing of it holds a resource the next phase needs. What was removed, one line each."""
        raise NotImplementedError

    def cleanup(self, experiment: str | None) -> list[str]:
        """Remove what runs of `experiment` (None: every experiment) that are no longer alive left
        behind. What was removed, one line each."""
        raise NotImplementedError

    def render(self, specs: list[EngineSpec]) -> dict[str, str]:
        """File name -> content: what deploying these trials would create (`trial-N-...` for the
        Nth), without contacting anything."""
        raise NotImplementedError


def backend_for(deployment: Any) -> Backend:
    """The backend for a task's `deployment` settings."""
    module, _, name = BACKENDS[deployment.backend].partition(":")
    return getattr(importlib.import_module(module), name)(deployment)
