"""The deployer interface: one uniquely named engine per trial, always torn down."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from llm_autotuner.cluster.engines import EngineProfile


def _no_news() -> str | None:
    return None


def carry_on() -> None:
    """The default `interrupt` of the waits: nothing stops them but their deadline."""


@dataclass(frozen=True)
class Endpoint:
    url: str  # where this process (the trial) reaches the engine
    cluster_url: str  # where a pod in the cluster reaches it (a BenchmarkJob); same as url locally
    # Why the engine stopped serving after it was ready (it exited, say), or None while it serves:
    # checked while the benchmark runs, so a crash fails the trial at once with the engine's words.
    failure: Callable[[], str | None] = _no_news
    # How this process reaches it: "direct", or "port-forward" (through the Kubernetes API server
    # and the kubelet: the latencies measured include that tunnel; docs/benchmarks.md).
    via: str = "direct"


@dataclass(frozen=True)
class EngineSpec:
    """Everything a backend needs to deploy one trial's engine."""

    experiment: str
    run_id: str  # one run of the experiment; labels and records carry it so cleanup can find leftovers
    trial_id: str
    profile: EngineProfile
    executable: str
    model_path: str
    served_name: str
    flags: dict[str, Any]  # canonical flag -> value, fixed task flags merged with the trial's
    workdir: Path  # the trial's folder: logs go here
    env: dict[str, str] = field(default_factory=dict)
    run_host: str = ""  # the host of the run's driver (cluster/records.py:host_id), for leftover sweeps


class Deployer:
    """Backends implement deploy / wait_ready / endpoint / teardown; `deployed` ties them together."""

    def deploy(self, spec: EngineSpec) -> Any:
        raise NotImplementedError

    def wait_ready(self, deployment: Any, deadline: float, interrupt: Callable[[], None] = carry_on) -> None:
        """Return once the engine serves; raise DeploymentError on failure or at `deadline`
        (a time.monotonic() value). `interrupt()` is called every few seconds at most while it
        waits: what it raises (the run was stopped) ends the wait."""
        raise NotImplementedError

    def endpoint(self, deployment: Any) -> Endpoint:
        raise NotImplementedError

    def teardown(self, deployment: Any) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def deployed(self, spec: EngineSpec, ready_timeout_s: float,
                 interrupt: Callable[[], None] = carry_on) -> Iterator[Endpoint]:
        """Deploy, wait until ready, yield its endpoint; tear down on every exit path."""
        deployment = self.deploy(spec)
        try:
            self.wait_ready(deployment, time.monotonic() + ready_timeout_s, interrupt)
            yield self.endpoint(deployment)
        finally:
            self.teardown(deployment)
