"""Local backend: the engine runs as a process on this node, on a free loopback port."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from cluster.deployer import Deployer, Endpoint, EngineSpec
from cluster.engines import Launch
from cluster.procs import ProcessGroup
from cluster.records import EngineRecord
from tuner.errors import DeploymentError

HEALTH_POLL_S = 0.25
HEALTH_REQUEST_TIMEOUT_S = 2.0
TEARDOWN_GRACE_S = 10.0
# Health checks go straight to the engine, never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class LocalDeployment:
    spec: EngineSpec
    base_url: str
    health_url: str
    group: ProcessGroup
    record: EngineRecord


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalDeployer(Deployer):
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host

    def deploy(self, spec: EngineSpec) -> LocalDeployment:
        port = free_port(self.host)
        launch = Launch(spec.executable, spec.model_path, spec.served_name, self.host, port)
        argv = spec.profile.argv(launch, spec.flags)
        spec.workdir.mkdir(parents=True, exist_ok=True)
        (spec.workdir / "engine_argv.json").write_text(json.dumps(argv))
        try:
            group = ProcessGroup(argv, log_path=str(spec.workdir / "engine.log"),
                                 env={**os.environ, **spec.env})
        except OSError as error:
            raise DeploymentError(f"cannot start {argv[0]}: {error.strerror}") from None
        record = EngineRecord(spec.run_id, spec.experiment, spec.trial_id, group.pgid, group.started, argv[0])
        record.save()
        base_url = f"http://{self.host}:{port}"
        return LocalDeployment(spec, base_url, base_url + spec.profile.health_path, group, record)

    def wait_ready(self, deployment: LocalDeployment, deadline: float) -> None:
        while True:
            code = deployment.group.poll()
            if code is not None:
                raise DeploymentError(
                    f"engine exited with code {code} before it was ready; last lines of its log:\n"
                    + deployment.group.log_tail())
            if _healthy(deployment.health_url):
                return
            if time.monotonic() >= deadline:
                raise DeploymentError(f"engine not ready at {deployment.health_url} before the deadline; "
                                      "last lines of its log:\n" + deployment.group.log_tail())
            time.sleep(HEALTH_POLL_S)

    def endpoint(self, deployment: LocalDeployment) -> Endpoint:
        return Endpoint(deployment.base_url, deployment.base_url)

    def teardown(self, deployment: LocalDeployment) -> None:
        deployment.group.stop(TEARDOWN_GRACE_S)
        deployment.record.forget()


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=HEALTH_REQUEST_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False
