"""A stand-in for OME's controller on the Kubernetes API emulator, for tests.

On each new InferenceService it plays one scenario: `ready` brings up a REAL llama-server with the
flags from the manifest's runner args (so the trial's flags matter) the way a pod comes up (Pending,
ContainerCreating, Running and not Ready, then Ready once the engine answers; see `_start_engine`),
registers it as the target of the engine pod's port-forward, and only then sets Ready=True; `never-ready`, `crashloop`, `oom`,
`imagepull` and `unschedulable` leave the service un-Ready and show that state in its engine pod. The pod
is owned by its InferenceService (ownerReference, blockOwnerDeletion), so the emulator's garbage
collector deletes it with the service, and a Foreground delete of the service waits for it. A pod
being deleted stops its engine after `termination_grace_s` (the pod's grace period: an engine freeing
its memory), and stays until then.
`lifetimes` records each engine's (InferenceService name, start, exit) wall-clock times.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from llm_autotuner.cluster.local import PORT_TAKEN_WORDS, free_port
from llm_autotuner.cluster.procs import ProcessGroup

GROUP, VERSION, PLURAL = "ome.io", "v1beta1", "inferenceservices"
# What the `crashloop` scenario's engine said before it exited: SGLang 0.4-0.5 out of memory at start.
CRASHED_ENGINE_LOG = """[2026-12-06 10:00:01] server_args=ServerArgs(model_path='/mnt/models/llama', mem_fraction_static=0.95)
[2026-12-06 10:00:09 TP0] Scheduler hit an exception: Traceback (most recent call last):
  File "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py", line 2315, in run_scheduler_process
    scheduler = Scheduler(server_args, port_args, gpu_id, tp_rank, dp_rank)
RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.

[2026-12-06 10:00:09] Received sigquit from a child process. It usually means the child failed.
"""
PORT_ATTEMPTS = 5


class FakeOme:
    def __init__(self, emulator, llama_server: str, model: str, log_dir, scenario: str = "ready",
                 termination_grace_s: float = 0.0, phase_s: float = 0.3, ready_timeout_s: float = 60.0):
        self.emulator, self.llama_server, self.model, self.log_dir = emulator, llama_server, model, log_dir
        self.scenario = scenario
        self.termination_grace_s = termination_grace_s
        self.phase_s = phase_s  # how long the pod stays unscheduled, then in ContainerCreating
        self.ready_timeout_s = ready_timeout_s  # the readiness probe's patience
        self.events_sent = 0
        self.engines: dict[str, ProcessGroup] = {}
        self.started: dict[str, float] = {}
        self.ports: dict[str, int] = {}  # InferenceService name -> its engine's local port
        self.lifetimes: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()
        emulator.on_create(PLURAL, self._created)
        emulator.on_delete("pods", self._pod_deleted)
        if termination_grace_s > 0:
            emulator.set_deletion_delay("pods", termination_grace_s)

    def _pod(self, isvc: dict, **status) -> dict:
        name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
        # OME's chain is InferenceService -> Deployment -> ReplicaSet -> Pod; one link stands for it.
        owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "name": name,
                 "uid": isvc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        return {"metadata": {"name": f"{name}-engine-0", "namespace": ns, "ownerReferences": [owner],
                             "labels": {"ome.io/inferenceservice": name, "component": "engine"}},
                "spec": {"containers": [{"name": "ome-container", "image": "engine"}]}, "status": status}

    def _created(self, isvc: dict) -> None:
        ns = isvc["metadata"]["namespace"]
        if self.scenario == "ready":
            self._start_engine(isvc)
        elif self.scenario == "crashloop":
            self.emulator.set_pod_log(ns, f"{isvc['metadata']['name']}-engine-0", "ome-container",
                                      lambda: CRASHED_ENGINE_LOG, previous=True)
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
        """As OME's controller and the kubelet bring an engine up: the pod exists at once, Pending
        (unscheduled, then its container being created), then Running but not Ready until the
        engine answers its readiness probe (/health); only then is the pod Ready and the
        InferenceService Ready. An engine that exits goes to CrashLoopBackOff; one that never
        answers stays Running and not Ready, and its InferenceService never turns Ready."""
        name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
        pod_name = f"{name}-engine-0"
        self.emulator.put_pod(ns, self._pod(isvc, phase="Pending", conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "", "message": ""}]))
        time.sleep(self.phase_s)
        self._event(ns, pod_name, "Scheduled", f"Successfully assigned {ns}/{pod_name} to gpu-node-1")
        self.emulator.put_pod(ns, self._pod(isvc, phase="Pending", conditions=[
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
            containerStatuses=[self._container(False, {"waiting": {"reason": "ContainerCreating"}})]))
        time.sleep(self.phase_s)
        self._event(ns, pod_name, "Started", "Started container ome-container")
        running = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}]
        self.emulator.put_pod(ns, self._pod(isvc, phase="Running", conditions=running,
                                            containerStatuses=[self._container(False, {"running": {}})]))
        for _ in range(PORT_ATTEMPTS):
            group, healthy = self._run_engine(isvc)
            # A pod has a network namespace of its own; these engines share this host's ports, and
            # another process may take the one chosen before the engine binds it: a new port then.
            if healthy or not any(words in group.log_tail(5).lower() for words in PORT_TAKEN_WORDS):
                break
        if not healthy:
            code = group.poll()
            if code is not None:  # exited: the kubelet restarts it, backing off
                self.emulator.put_pod(ns, self._pod(isvc, phase="Running", conditions=running, containerStatuses=[
                    self._container(False, {"waiting": {"reason": "CrashLoopBackOff",
                                                        "message": "back-off 10s restarting failed container"}},
                                    last={"terminated": {"reason": "Error", "exitCode": code}}, restarts=1)]))
            self._event(ns, pod_name, "Unhealthy", "Readiness probe failed: connection refused", kind="Warning")
            return
        self.emulator.put_pod(ns, self._pod(isvc, phase="Running", conditions=[
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
            containerStatuses=[self._container(True, {"running": {}})]))
        self.emulator.set_status(GROUP, VERSION, ns, PLURAL, name,
                                 {"url": f"http://{name}.{ns}.svc.cluster.local:8080"})
        self.emulator.add_condition(GROUP, VERSION, ns, PLURAL, name, "Ready", "True")

    def _run_engine(self, isvc: dict) -> tuple[ProcessGroup, bool]:
        """The pod's engine started on a free local port and made its port-forward target; whether it
        answered its readiness probe before it exited or the probe gave up."""
        name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
        port = free_port()
        args = isvc["spec"]["engine"]["runner"].get("args", [])
        argv = [self.llama_server, "--model", self.model, "--host", "127.0.0.1", "--port", str(port),
                "--alias", "smollm2"] + args
        log = self.log_dir / f"{name}.log"
        group = ProcessGroup(argv, log_path=str(log))
        # The pod's log is its engine's, and after an exit the kubelet keeps it as the "previous" one.
        for previous in (False, True):
            self.emulator.set_pod_log(ns, f"{name}-engine-0", "ome-container", log.read_text, previous=previous)
        with self.lock:
            self.engines[name] = group
            self.started[name] = time.time()
            self.ports[name] = port
        self.emulator.set_pod_target(ns, f"{name}-engine-0", 8080, ("127.0.0.1", port))
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline and group.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        return group, True
            except OSError:
                time.sleep(0.2)
        return group, False

    @staticmethod
    def _container(ready: bool, state: dict, last: dict | None = None, restarts: int = 0) -> dict:
        return {"name": "ome-container", "ready": ready, "restartCount": restarts, "image": "llama-server",
                "imageID": "", "state": state, **({"lastState": last} if last else {})}

    def _event(self, ns: str, pod_name: str, reason: str, message: str, kind: str = "Normal") -> None:
        self.events_sent += 1
        self.emulator.put_event(ns, {"metadata": {"name": f"{pod_name}.{self.events_sent}"}, "type": kind,
                                     "reason": reason, "message": message,
                                     "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": ns}})

    def _pod_deleted(self, pod: dict) -> None:
        name = (pod["metadata"].get("labels") or {}).get("ome.io/inferenceservice")
        time.sleep(self.termination_grace_s)  # the engine keeps its GPUs until its pod has terminated
        with self.lock:
            group = self.engines.pop(name, None)
        if group is not None:
            group.stop(5)
            with self.lock:
                self.lifetimes.append((name, self.started.pop(name), time.time()))

    def stop_all(self) -> None:
        with self.lock:
            groups, self.engines = list(self.engines.values()), {}
        for group in groups:
            group.stop(5)


class FakeBenchmarkJobs:
    """OME's benchmark controller, standing in: on each new BenchmarkJob it runs the real genai-bench
    (plain, as OME's job pod does: no request log of ours) against the engine the job's endpoint
    names, whose cluster DNS name resolves here to the FakeOme engine's local port, and writes into
    the folder the job's storageUri names: the claim `claim_uri` is mounted at `mount`, as the
    driver's pod would mount it. status.state goes Running, then Completed or Failed with details."""

    def __init__(self, emulator, engines: FakeOme, claim_uri: str, mount: Path, tokenizer: str):
        self.emulator, self.engines, self.claim_uri, self.mount = emulator, engines, claim_uri, Path(mount)
        self.tokenizer = tokenizer
        self.runs: list[list[str]] = []
        self.running: dict[str, subprocess.Popen] = {}
        emulator.on_create("benchmarkjobs", self._created)
        emulator.on_delete("benchmarkjobs", self._deleted)

    def _created(self, job: dict) -> None:
        name, ns, spec = job["metadata"]["name"], job["metadata"]["namespace"], job["spec"]
        target = spec["endpoint"]["endpoint"]
        service = urlsplit(target["url"]).hostname.split(".")[0]
        out = self.mount / spec["outputLocation"]["storageUri"][len(self.claim_uri):].strip("/")
        argv = [str(Path(sys.executable).with_name("genai-bench")), "benchmark", "--api-backend", "openai",
                "--api-base", f"http://127.0.0.1:{self.engines.ports[service]}", "--api-key", "none",
                "--api-model-name", target["modelName"], "--model-tokenizer", self.tokenizer,
                "--task", spec["task"], "--max-time-per-run", str(spec["maxTimePerIteration"]),
                "--max-requests-per-run", str(spec["maxRequestsPerIteration"]),
                "--experiment-base-dir", str(out), "--experiment-folder-name", name]
        for scenario in spec["trafficScenarios"]:
            argv += ["--traffic-scenario", scenario]
        for level in spec["numConcurrency"]:
            argv += ["--num-concurrency", str(level)]
        self.runs.append(argv)
        self._state(ns, name, {"state": "Running"})
        out.mkdir(parents=True, exist_ok=True)
        limit = 60 * spec["maxTimePerIteration"] * len(spec["numConcurrency"]) + 120
        with open(out / "job.log", "w") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=out)  # its log lands in cwd
            self.running[name] = process
            try:
                code = process.wait(limit)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
        self._state(ns, name, {"state": "Completed"} if code == 0
                    else {"state": "Failed", "details": f"genai-bench exited with code {code}"})

    def _deleted(self, job: dict) -> None:
        process = self.running.pop(job["metadata"]["name"], None)
        if process is not None and process.poll() is None:
            process.terminate()  # the job's pod goes with the job

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.kill()

    def _state(self, ns: str, name: str, status: dict) -> None:
        try:
            self.emulator.set_status("ome.io", "v1beta1", ns, "benchmarkjobs", name, status)
        except KeyError:
            pass  # deleted meanwhile: the trial ended
