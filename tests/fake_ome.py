"""A stand-in for OME's controller on the Kubernetes API emulator, for tests.

On each new InferenceService it plays one scenario: `ready` starts a REAL llama-server with the
flags from the manifest's runner args (so the trial's flags matter), registers it as the target
of the engine pod's port-forward, and sets Ready=True; `never-ready`, `crashloop`, `oom`,
`imagepull` and `unschedulable` leave the service un-Ready and show that state in its engine pod. On delete it
stops the engine, after `termination_grace_s` (a pod's grace period: an engine freeing its memory).
`lifetimes` records each engine's (InferenceService name, start, exit) wall-clock times.
"""

from __future__ import annotations

import threading
import time
import urllib.request

from llm_autotuner.cluster.local import free_port
from llm_autotuner.cluster.procs import ProcessGroup

GROUP, VERSION, PLURAL = "ome.io", "v1beta1", "inferenceservices"


class FakeOme:
    def __init__(self, emulator, llama_server: str, model: str, log_dir, scenario: str = "ready",
                 termination_grace_s: float = 0.0):
        self.emulator, self.llama_server, self.model, self.log_dir = emulator, llama_server, model, log_dir
        self.scenario = scenario
        self.termination_grace_s = termination_grace_s
        self.engines: dict[str, ProcessGroup] = {}
        self.started: dict[str, float] = {}
        self.lifetimes: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()
        emulator.on_create(PLURAL, self._created)
        emulator.on_delete(PLURAL, self._deleted)

    def _pod(self, isvc: dict, **status) -> dict:
        name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
        return {"metadata": {"name": f"{name}-engine-0", "namespace": ns,
                             "labels": {"ome.io/inferenceservice": name, "component": "engine"}},
                "status": status}

    def _created(self, isvc: dict) -> None:
        ns = isvc["metadata"]["namespace"]
        if self.scenario == "ready":
            self._start_engine(isvc)
        elif self.scenario == "crashloop":
            self.emulator.put_pod(ns, self._pod(isvc, phase="Running", containerStatuses=[{
                "name": "ome-container", "ready": False, "restartCount": 3, "image": "sglang", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
                "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}]))
        elif self.scenario == "oom":
            self.emulator.put_pod(ns, self._pod(isvc, phase="Running", containerStatuses=[{
                "name": "ome-container", "ready": False, "restartCount": 1, "image": "sglang", "imageID": "",
                "state": {"running": {}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]))
        elif self.scenario == "imagepull":
            self.emulator.put_pod(ns, self._pod(isvc, phase="Pending", containerStatuses=[{
                "name": "ome-container", "ready": False, "restartCount": 0, "image": "sglang:nope", "imageID": "",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image sglang:nope"}}}]))
        elif self.scenario == "unschedulable":
            self.emulator.put_pod(ns, self._pod(isvc, phase="Pending", conditions=[{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]))
        # never-ready: nothing happens, as with a controller that is not running

    def _start_engine(self, isvc: dict) -> None:
        name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
        port = free_port()
        args = isvc["spec"]["engine"]["runner"].get("args", [])
        argv = [self.llama_server, "--model", self.model, "--host", "127.0.0.1", "--port", str(port),
                "--alias", "smollm2"] + args
        group = ProcessGroup(argv, log_path=str(self.log_dir / f"{name}.log"))
        with self.lock:
            self.engines[name] = group
            self.started[name] = time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and group.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        pod = self._pod(isvc, phase="Running")
        self.emulator.put_pod(ns, pod)
        self.emulator.set_pod_target(ns, pod["metadata"]["name"], 8080, ("127.0.0.1", port))
        self.emulator.set_status(GROUP, VERSION, ns, PLURAL, name,
                                 {"url": f"http://{name}.{ns}.svc.cluster.local:8080"})
        self.emulator.add_condition(GROUP, VERSION, ns, PLURAL, name, "Ready", "True")

    def _deleted(self, isvc: dict) -> None:
        name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
        time.sleep(self.termination_grace_s)  # the engine keeps its GPUs until its pod has terminated
        with self.lock:
            group = self.engines.pop(name, None)
        if group is not None:
            group.stop(5)
            with self.lock:
                self.lifetimes.append((name, self.started.pop(name), time.time()))
        try:
            self.emulator.delete_pod(ns, f"{name}-engine-0")
        except KeyError:
            pass

    def stop_all(self) -> None:
        with self.lock:
            groups, self.engines = list(self.engines.values()), {}
        for group in groups:
            group.stop(5)
