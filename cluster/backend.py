"""The backend interface: where a task's engines run, as the driver and the trials see it.

A backend is one module of cluster/ (local.py, ome.py) with one `Backend` subclass. Its
`deployer()` deploys one trial's engine (cluster/deployer.py); the rest is what the driver needs
around the trials: what a trial holds in Ray, what a dry run would deploy, and how to remove what
runs left behind. Adding a backend is that module, its settings in the task model
(llm_autotuner/task.py) and a line in BACKENDS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import os
import math
from typing import Any, Callable

from llm_autotuner.cluster.deployer import Deployer, EngineSpec
from llm_autotuner.cluster.engines import EngineProfile, EngineSetup, profile_for
from llm_autotuner.cluster.node_check import NodeCheck
from llm_autotuner.task import FloatRange, IntRange, Task

# deployment.backend -> "module:Class", imported when used: the kubernetes client only for OME.
BACKENDS = {"local": "llm_autotuner.cluster.local:LocalBackend", "ome": "llm_autotuner.cluster.ome:OmeBackend"}


class Backend:
    # An engine that fails at start is started once more with only the task's fixed flags, to tell a
    # bad config from a broken setup: worth it where a start costs seconds, not a pod's scheduling.
    control_start = True
    # Engines run on their trial's Ray node and use the GPUs Ray assigned the trial (a backend whose
    # engines run elsewhere, with GPUs of their own, sets False).
    gpus_from_ray = True

    def deployer(self) -> Deployer:
        """What deploys one trial's engine, waits until it serves, and tears it down."""
        raise NotImplementedError

    def claim(self, engine: dict[str, float], client_cpus: float, node_cpus: int) -> dict[str, float]:
        """What one trial holds in Ray, given its engine's demand (EngineProfile.resources) and the
        CPUs of its load generator."""
        raise NotImplementedError

    # By default engines run from files on the Ray nodes (a binary, a model), which the engine's
    # profile checks and sets up (cluster/engines.py); a backend whose engines come in an image
    # overrides these four.
    def check(self, profile: EngineProfile, task: Task) -> None:
        """The files the task names, before anything is built or started (validate, run)."""
        profile.check(task.model, task.engine)

    def setup(self, profile: EngineProfile, task: Task, prove_here: bool) -> EngineSetup:
        """What every trial's engine uses, found (or built) once before the run starts Ray.
        `prove_here`: the trials run on this machine, so its binary is proven here."""
        return profile.setup(task.model, task.engine, prove_here)

    def node_check(self, profile: EngineProfile, task: Task, model_path: str) -> NodeCheck:
        """What each Ray node that runs trials must have for the engine (cluster/node_check.py):
        what the profile names, and the model the driver found (`model_path`, unless a hub id)."""
        check = profile.node_check(task.engine)
        model = (("the model", model_path),) if os.path.exists(model_path) else ()
        return dataclasses.replace(check, files=check.files + model)

    def offers(self) -> dict[str, float]:
        """Custom Ray resources the trials claim that no node has by itself: a local Ray is started
        with them, a Ray cluster must offer them."""
        return {}

    def hold(self, experiment: str, run_id: str) -> contextlib.AbstractContextManager:
        """Held for the whole run: what tells every host that the run is alive (OME: a Lease its
        objects belong to). Local engines are judged by their run's PID record instead."""
        return contextlib.nullcontext()

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

    def export(self, spec: EngineSpec) -> dict[str, str]:
        """File name -> content: what deploys the winning config `spec` for good, beyond its launch
        line (best_command.txt): none for local engines."""
        return {}

    def render(self, specs: dict[int, EngineSpec]) -> dict[str, str]:
        """File name -> content: what deploying these trials (by number) would create
        (`trial-N-...` for trial N), without contacting anything."""
        raise NotImplementedError


def backend_for(deployment: Any) -> Backend:
    """The backend for a task's `deployment` settings."""
    module, _, name = BACKENDS[deployment.backend].partition(":")
    return getattr(importlib.import_module(module), name)(deployment)


def trial_claim(task: Task, params: dict[str, Any], node_cpus: int) -> dict[str, float]:
    """What one trial with these engine parameters holds in Ray: its engine's demand plus the
    CPUs of its load generator, as the task's backend counts them."""
    profile = profile_for(task.engine.name)
    engine = profile.resources(profile.merged(task.engine.args, params), node_cpus)
    client_cpus = task.benchmark.client_cpus if task.benchmark.runner == "direct" else 0.0
    demand = backend_for(task.deployment).claim(engine, client_cpus, node_cpus)
    return {kind: amount for kind, amount in demand.items() if amount} or {"CPU": 0.01}


def cheapest_params(task: Task) -> dict[str, Any]:
    """The config of the space with every parameter at its smallest value: the smallest claim
    (a choice holds no null: the engine's default is the baseline trial's, not a value to search)."""
    return _each_at(task, min)


def dearest_params(task: Task) -> dict[str, Any]:
    """The config of the space with every numeric parameter at its largest value: the largest claim."""
    return _each_at(task, max)


def _each_at(task: Task, end: Callable[..., Any]) -> dict[str, Any]:
    # Numbers at that end; choices of words or switches each way (SGLang's enable-dp-attention
    # changes what dp-size claims), the one whose claim is at that end kept.
    ends: dict[str, list[Any]] = {}
    for name, spec in task.search_space.items():
        if isinstance(spec, (IntRange, FloatRange)):
            ends[name] = [end([spec.min, spec.max])]
        else:
            numbers = [v for v in spec if isinstance(v, (int, float)) and not isinstance(v, bool)]
            ends[name] = [end(numbers)] if numbers else spec
    configs = [dict(zip(ends, values)) for values in itertools.islice(itertools.product(*ends.values()), 256)]
    cpus = os.cpu_count() or 1

    def weight(config: dict[str, Any]) -> tuple[float, float]:
        claim = trial_claim(task, config, cpus)
        return sum(amount for kind, amount in claim.items() if kind != "CPU"), claim.get("CPU", 0.0)

    return configs[0] if len(configs) == 1 else end(configs, key=weight)


def beyond_offers(claim: dict[str, float], offers: dict[str, float]) -> str | None:
    """What of a trial's claim the deployment does not offer (Backend.offers), or None."""
    over = [f"{claim[kind]:g} {kind} where the deployment offers {have:g}"
            for kind, have in offers.items() if claim.get(kind, 0) > have]
    return "; ".join(over) or None


def shortfall(claim: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why no node can hold `claim` (a trial's bundle is placed on one node), or None if one can.
    `nodes`: each node's total resources."""
    def fits(node: dict[str, float]) -> bool:
        return all(node.get(kind, 0) >= amount for kind, amount in claim.items())

    def worst_ratio(node: dict[str, float]) -> float:
        return max(amount / node[kind] if node.get(kind) else math.inf for kind, amount in claim.items())

    if any(map(fits, nodes)):
        return None
    if not nodes:
        return "cannot be placed: no Ray node is alive"
    nearest = min(nodes, key=worst_ratio)
    short = max(claim, key=lambda kind: claim[kind] / nearest[kind] if nearest.get(kind) else math.inf)
    largest = max(node.get(short, 0) for node in nodes)
    if largest < claim[short]:
        return f"needs {claim[short]:g} {short} on one node; the largest Ray node has {largest:g}"
    wanted = ", ".join(f"{amount:g} {kind}" for kind, amount in claim.items())
    return f"needs {wanted} on one node; no Ray node has all of that"
