"""Local backend: the engine runs as a process on this node, on a free loopback port."""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

from llm_autotuner.cluster import records
from llm_autotuner.cluster.backend import Backend
from llm_autotuner.cluster.deployer import Deployer, Endpoint, EngineSpec, carry_on
from llm_autotuner.cluster.engines import Launch
from llm_autotuner.cluster.nodes import everywhere
from llm_autotuner.cluster.procs import ProcessGroup, exit_hint, exit_text, telling_line
from llm_autotuner.cluster.records import EngineRecord
from llm_autotuner.errors import DeploymentError
from llm_autotuner.task import LocalDeployment as LocalSettings

HEALTH_POLL_S = 0.25
HEALTH_REQUEST_TIMEOUT_S = 2.0
TEARDOWN_GRACE_S = 10.0
PORT_ATTEMPTS = 3
# How llama-server ("couldn't bind HTTP server socket") and Python servers say their port is taken.
PORT_TAKEN_WORDS = ("couldn't bind", "address already in use")
# Health checks go straight to the engine, never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class LocalDeployment:
    spec: EngineSpec
    base_url: str
    health_url: str
    group: ProcessGroup
    record: EngineRecord
    port: int


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalDeployer(Deployer):
    """`pick_port` chooses each engine's port (default: one the OS says is free). Between that
    choice and the engine's bind, another process may take the port: the engine then exits, and
    is started again on a new port, up to PORT_ATTEMPTS times."""

    def __init__(self, host: str = "127.0.0.1", pick_port: Callable[[str], int] = free_port):
        self.host = host
        self.pick_port = pick_port

    def deploy(self, spec: EngineSpec) -> LocalDeployment:
        return self._start(spec, self.pick_port(self.host))

    def _start(self, spec: EngineSpec, port: int) -> LocalDeployment:
        launch = Launch(spec.executable, spec.model_path, spec.served_name, self.host, port)
        argv = spec.profile.argv(launch, spec.flags)
        spec.workdir.mkdir(parents=True, exist_ok=True)
        (spec.workdir / "engine_argv.json").write_text(json.dumps(argv))
        try:
            group = ProcessGroup(argv, log_path=str(spec.workdir / "engine.log"),
                                 env={**os.environ, **spec.env})
        except OSError as error:
            raise DeploymentError(f"cannot start {argv[0]}: {error.strerror or error}") from None
        record = EngineRecord(spec.run_id, spec.experiment, spec.trial_id, group.pgid, group.started, argv[0],
                              records.host_id(), spec.run_host)
        try:
            record.save()
        except BaseException:  # unrecorded, `autotuner cleanup` could not find it later
            group.stop(grace_s=0)
            raise
        base_url = f"http://{self.host}:{port}"
        return LocalDeployment(spec, base_url, base_url + spec.profile.health_path, group, record, port)

    def wait_ready(self, deployment: LocalDeployment, deadline: float,
                   interrupt: Callable[[], None] = carry_on) -> None:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return self._wait(deployment, deadline, interrupt)
            except _PortTaken as taken:
                if attempt == PORT_ATTEMPTS:
                    raise DeploymentError(f"{taken} ({PORT_ATTEMPTS} ports tried, each taken before the "
                                          "engine could bind it)") from None
                self.teardown(deployment)
                fresh = self._start(deployment.spec, self.pick_port(self.host))
                deployment.base_url, deployment.health_url = fresh.base_url, fresh.health_url
                deployment.group, deployment.record, deployment.port = fresh.group, fresh.record, fresh.port

    def _wait(self, deployment: LocalDeployment, deadline: float, interrupt: Callable[[], None]) -> None:
        while True:
            interrupt()
            code = deployment.group.poll()
            if code is not None:
                tail = deployment.group.log_tail()
                if any(words in tail.lower() for words in PORT_TAKEN_WORDS):
                    raise _PortTaken(f"engine could not bind {deployment.base_url}: {telling_line(tail)}")
                raise DeploymentError(f"engine {exit_text(code)} before it was ready: "
                                      f"{exit_hint(code, deployment.group.argv[0]) or telling_line(tail)}"
                                      f"\nlast lines of its log:\n{tail}")
            # Another program may hold the port and answer there (the port was free when chosen):
            # benchmarking it would measure someone else's server. Ours then exits, unable to bind.
            answered = _healthy(deployment.health_url)
            if answered and deployment.group.listens_on(deployment.port):
                return
            if time.monotonic() >= deadline:
                tail = deployment.group.log_tail()
                whose = (f"; a program outside the engine's process group answers on port {deployment.port}"
                         if answered else "")
                raise DeploymentError(f"engine not ready at {deployment.health_url} before the deadline "
                                      f"(deployment.ready_timeout_s){whose}; last lines of its log:\n{tail}")
            time.sleep(HEALTH_POLL_S)

    def endpoint(self, deployment: LocalDeployment) -> Endpoint:
        return Endpoint(deployment.base_url, deployment.base_url, failure=lambda: _exit_reason(deployment.group))

    def teardown(self, deployment: LocalDeployment) -> None:
        if deployment.group.stop(TEARDOWN_GRACE_S):
            deployment.record.forget()  # else kept: the run's end, `autotuner cleanup` or the next run find it


def _exit_reason(group: ProcessGroup) -> str | None:
    code = group.poll()
    if code is None:
        return None
    if code < 0:  # a signal: its log ends mid-work and says nothing about it
        return f"engine {exit_text(code)} during the benchmark ({exit_hint(code, group.argv[0]) or 'from outside'})"
    return f"engine exited with code {code} during the benchmark: {telling_line(group.log_tail())}"


class _PortTaken(Exception):
    pass


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=HEALTH_REQUEST_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


LAUNCH_HOST, LAUNCH_PORT = "127.0.0.1", 8080  # in launch lines written for a user


class LocalBackend(Backend):
    """Engines as processes on the trial's Ray node, claimed as that node's CPUs (and GPUs)."""

    def __init__(self, settings: LocalSettings):
        self.settings = settings

    def deployer(self) -> LocalDeployer:
        return LocalDeployer()

    def claim(self, engine: dict[str, float], client_cpus: float, node_cpus: int) -> dict[str, float]:
        # Capped at one node's CPUs, or the trial could never be placed. On a small machine this
        # runs CPU trials one after another, which keeps them from distorting each other's numbers.
        return engine | {"CPU": min(engine.get("CPU", 0) + client_cpus, node_cpus)}

    # Each node keeps the records of the engines started on it: on a Ray cluster, every node is swept.
    def settle(self, run_id: str) -> list[str]:
        return list(dict.fromkeys(
            f"engine process group {record.pgid} (trial {record.trial_id}): its teardown was cut short"
            for record in everywhere(records.kill_run_engines, run_id)))

    def cleanup(self, experiment: str | None) -> list[str]:
        # Two rounds: a run is judged on its driver's node, its engines may be on any other.
        live = everywhere(records.live_runs_here)
        return list(dict.fromkeys(
            f"engine process group {record.pgid} ({record.experiment}, trial {record.trial_id}) left by run "
            f"{record.run_id}" for record in everywhere(records.kill_leftover_engines, experiment, live)))

    def render(self, specs: dict[int, EngineSpec]) -> dict[str, str]:
        files = {}
        for number, spec in specs.items():
            argv = spec.profile.argv(launch_of(spec), spec.flags)
            files[f"trial-{number}-launch.json"] = json.dumps(
                {"argv": argv, "command": shlex.join(argv)}, indent=2) + "\n"
        return files


def launch_of(spec: EngineSpec) -> Launch:
    """Where a launch line written for a user (a dry run, the winner) serves."""
    return Launch(spec.executable, spec.model_path, spec.served_name, LAUNCH_HOST, LAUNCH_PORT)
