"""OME backend: one uniquely named InferenceService per trial, carrying that trial's engine flags.

Ready means the InferenceService's `Ready` condition is True, seen through a watch that is
re-established whenever the connection drops. Between watch segments the engine pods are
checked, so a crash loop, an OOM kill, an image that cannot be pulled or a pod that stays
unschedulable fails the trial at once with the reason, instead of waiting out the deadline.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from llm_autotuner.cluster import kube, manifests, pod_logs
from llm_autotuner.cluster.lease import RunLease, owner_reference
from llm_autotuner.cluster.backend import Backend, cheapest_params
from llm_autotuner.cluster.cleanup import delete_labelled, wait_for_names, wait_until_gone
from llm_autotuner.cluster.deployer import Deployer, Endpoint, EngineSpec, carry_on
from llm_autotuner.cluster.engines import EngineProfile, EngineSetup
from llm_autotuner.cluster.node_check import NodeCheck
from llm_autotuner.cluster.portforward import PortForward
from llm_autotuner.errors import AutotunerError, DeploymentError, TaskError
from llm_autotuner.task import OmeDeployment as OmeSettings
from llm_autotuner.task import Task

PLURAL, KIND = "inferenceservices", "InferenceService"
WATCH_SEGMENT_S = 5  # how long one watch runs before the pods are checked again
FAILED_WAITING_REASONS = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                          "InvalidImageName", "CreateContainerError"}
DELETE_WAIT_S = 120
END_LOG_S = 10  # a teardown begins no read of the engine's whole log after this (pod_logs.READ_TIMEOUT_S a try)
MODEL_PATH_IN_POD = "$(MODEL_PATH)"  # how a runtime's command names the model the controller mounted
OME_GPU_RESOURCE = "ome_gpu"  # Ray custom resource: the Kubernetes GPUs the trials may hold at once


@dataclass
class OmeTrialDeployment:
    name: str
    namespace: str
    manifest: dict
    log_path: Path  # the trial's engine.log (cluster/pod_logs.py)
    status: dict = field(default_factory=dict)
    forward: PortForward | None = None
    # What tells the teardown the run is being stopped (wait_ready's `interrupt`): no log read then.
    interrupt: Callable[[], None] = carry_on
    # Whether the engine served and no crash log was kept: then, at the teardown, the whole log
    # replaces the start-up kept at Ready (cluster/pod_logs.py).
    log_at_end: bool = False


def gpus(spec: EngineSpec) -> int:
    return int(spec.profile.resources(spec.flags).get("GPU", 0))


def render(spec: EngineSpec, settings: OmeSettings, production: bool = False) -> dict:
    """The InferenceService manifest of one trial; `production`: of the winner, to keep serving
    (named `<task>-tuned`, none of the tuner's labels: no cleanup of the tuner's will touch it)."""
    return manifests.inference_service(
        name=(kube.resource_name(spec.experiment, "tuned") if production
              else kube.resource_name(spec.experiment, spec.trial_id, spec.run_id)),
        namespace=settings.namespace,
        labels={} if production else kube.labels(spec.experiment, spec.run_id, spec.trial_id),
        model_name=settings.model,
        runtime_name=settings.runtime,
        engine_args=spec.profile.flag_argv(spec.flags),
        gpus=gpus(spec),
        command=[str(part) for part in settings.command] if settings.command else None,
        node_selector=settings.node_selector or None,
        tolerations=settings.tolerations or None,
        env=(settings.env | spec.env) or None,
        annotations=settings.annotations or None,
    )


def cluster_url(settings: OmeSettings, spec: EngineSpec) -> str:
    """Where a pod in the cluster reaches the engine of `spec` (its InferenceService's service)."""
    name = kube.resource_name(spec.experiment, spec.trial_id, spec.run_id)
    return f"http://{name}.{settings.namespace}.svc.cluster.local:{settings.port}"


def runtime_manifest(settings: OmeSettings, served_name: str) -> dict:
    """The ClusterServingRuntime a task asks the tuner to create (deployment.create_runtime)."""
    wanted = settings.create_runtime
    return manifests.cluster_serving_runtime(
        name=settings.runtime, labels=dict(kube.MANAGED_BY), image=wanted.image,
        model_architecture=wanted.model_architecture, gpus=1,
        command=[str(part) for part in wanted.command] + ["--served-model-name", served_name])


def ensure_runtime(settings: OmeSettings, served_name: str, api: client.ApiClient | None = None) -> bool:
    """Create the task's ClusterServingRuntime unless it exists; True if created. It is left in place
    after the run: other InferenceServices may use it."""
    custom = client.CustomObjectsApi(api or kube.api_client(settings.kubeconfig, settings.context))
    try:
        custom.create_cluster_custom_object(kube.OME_GROUP, kube.OME_VERSION, "clusterservingruntimes",
                                            runtime_manifest(settings, served_name),
                                            _request_timeout=kube.REQUEST_TIMEOUT_S)
        return True
    except ApiException as error:
        if error.status == 409:
            return False
        raise kube.explain(error, "create", "ClusterServingRuntime", settings.runtime, None) from None


class OmeBackend(Backend):
    """One InferenceService per trial on Kubernetes; its GPUs held in Ray out of the task's budget."""

    control_start = False  # a second InferenceService costs minutes; failures common to all configs are API errors
    gpus_from_ray = False  # a pod gets its GPUs from Kubernetes

    def __init__(self, settings: OmeSettings):
        self.settings = settings

    def deployer(self) -> "OmeDeployer":
        return OmeDeployer(self.settings)

    # The runtime's image brings the engine and the controller mounts the model: nothing of them is
    # on this machine or the Ray nodes to check or set up; only that the space fits the GPU budget.
    def check(self, profile: EngineProfile, task: Task) -> None:
        if self.settings.kubeconfig or self.settings.context:  # named: it must load here (no default to fall back to)
            kube.check_config(self.settings.kubeconfig, self.settings.context)
        gpus = profile.resources(profile.merged(task.engine.args, cheapest_params(task))).get("GPU", 0.0)
        if gpus > self.settings.gpu_budget:
            raise TaskError(f"search_space: even its smallest config needs {gpus:g} GPUs; deployment.gpu_budget "
                            f"is {self.settings.gpu_budget}")
        # Each InferenceService's GPUs are counted from its flags (a missing one counts 1), and that
        # count replaces the runtime's: a runtime started with --tp-size 4 would get 1 GPU in the
        # baseline (the runtime's command with engine.args only) and in every config not tuning it.
        tensor_parallel = profile.gpu_flags[0] if profile.gpu_flags else None
        if tensor_parallel and tensor_parallel not in {profile.canonical(name) for name in task.engine.args}:
            raise TaskError(f"engine.args: set {tensor_parallel} to the runtime's own value (e.g. {tensor_parallel}: 1): "
                            f"on OME each InferenceService gets the GPUs its flags count, not the runtime's number, "
                            f"so the baseline and every config that does not tune it need it")

    def setup(self, profile: EngineProfile, task: Task, prove_here: bool) -> EngineSetup:
        kube.check_config(self.settings.kubeconfig, self.settings.context)
        # The launch line (best_command.txt) names the engine's launcher as the image has it, not a
        # path on this machine (an empty name printed as '' before the flags).
        return EngineSetup(executable=Path(profile.default_binary).name, model_path=task.model.path or MODEL_PATH_IN_POD,
                           served_name=task.model.name, tokenizer=task.model.tokenizer or "")

    def node_check(self, profile: EngineProfile, task: Task, model_path: str) -> NodeCheck:
        return NodeCheck()  # the engine runs in Kubernetes pods, not on the Ray nodes

    def claim(self, engine: dict[str, float], client_cpus: float, node_cpus: int) -> dict[str, float]:
        # The engine runs on Kubernetes nodes, not in Ray: only the load generator's CPUs are held in Ray.
        return {"CPU": client_cpus, OME_GPU_RESOURCE: engine.get("GPU", 0.0)}

    def offers(self) -> dict[str, float]:
        return {OME_GPU_RESOURCE: float(self.settings.gpu_budget)}

    def hold(self, experiment: str, run_id: str) -> RunLease:
        return RunLease(self.settings, experiment, run_id)

    def prepare(self, served_name: str) -> list[str]:
        if self.settings.create_runtime is not None and ensure_runtime(self.settings, served_name):
            return [f"created ClusterServingRuntime {self.settings.runtime}"]
        return []

    def settle(self, run_id: str) -> list[str]:
        selector = f"{kube.RUN_LABEL}={kube.label_value(run_id)}"
        done = [f"removed leftover {kind} {name}" for kind, name in delete_labelled(self.settings, selector)]
        left = wait_until_gone(self.settings, selector, DELETE_WAIT_S)
        return done + ([f"still being deleted after {DELETE_WAIT_S} s: {', '.join(left)}"] if left else [])

    def cleanup(self, experiment: str | None) -> list[str]:
        selector = "" if experiment is None else f"{kube.EXPERIMENT_LABEL}={kube.label_value(experiment)}"
        removed = delete_labelled(self.settings, selector, skip_live_runs=True)
        # Gone, not only marked: a run starting next must find their GPUs free.
        left = wait_for_names(self.settings, removed, DELETE_WAIT_S)
        return ([f"{kind} {name} in {self.settings.namespace}" for kind, name in removed]
                + ([f"(still being deleted after {DELETE_WAIT_S} s: {', '.join(left)})"] if left else []))

    def export(self, spec: EngineSpec) -> dict[str, str]:
        return {"best_inferenceservice.yaml": manifests.to_yaml(render(spec, self.settings, production=True))}

    def render(self, specs: dict[int, EngineSpec]) -> dict[str, str]:
        files = {f"trial-{number}-inferenceservice.yaml": manifests.to_yaml(render(spec, self.settings))
                 for number, spec in specs.items()}
        if self.settings.create_runtime is not None and specs:
            files["cluster-serving-runtime.yaml"] = manifests.to_yaml(runtime_manifest(
                self.settings, next(iter(specs.values())).served_name))
        return files


class OmeDeployer(Deployer):
    def __init__(self, settings: OmeSettings, api: client.ApiClient | None = None):
        self.settings = settings
        self.api = api or kube.api_client(settings.kubeconfig, settings.context)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def deploy(self, spec: EngineSpec) -> OmeTrialDeployment:
        manifest = render(spec, self.settings)
        # Owned by the run's Lease: if the run dies, its InferenceServices go with the Lease.
        manifest["metadata"]["ownerReferences"] = [owner_reference(self.settings, spec.experiment, spec.run_id,
                                                                   self.api)]
        name, namespace = manifest["metadata"]["name"], self.settings.namespace
        spec.workdir.mkdir(parents=True, exist_ok=True)
        (spec.workdir / "inference_service.yaml").write_text(manifests.to_yaml(manifest))
        deployment = OmeTrialDeployment(name, namespace, manifest, spec.workdir / "engine.log")
        try:
            self._create(deployment)
        except ApiException as error:
            if error.status >= 500:  # a webhook or etcd timing out may answer after the write was stored
                with contextlib.suppress(Exception):
                    self.teardown(deployment)
            raise kube.explain(error, "create", KIND, name, namespace) from None
        except BaseException as error:
            # The create may have been carried out before its answer was lost (a read timeout, a
            # dropped connection, Ctrl-C): an object nobody knows of would hold its GPUs until the
            # run's end while Ray gives them to the next trial. Deleted by name, if it is there.
            with contextlib.suppress(Exception):
                self.teardown(deployment)
            if isinstance(error, (HTTPError, OSError)):
                raise DeploymentError(f"creating {KIND} {name} in {namespace}: no answer from the API "
                                      f"({type(error).__name__}); deleted it in case it was made") from None
            raise
        return deployment

    def _create(self, deployment: OmeTrialDeployment) -> None:
        """Create the InferenceService, asked again while the API is busy: a busy API server is no
        verdict on the config. One of its name is there already when an attempt before was carried
        out though its answer was lost, or when Ray runs this trial again after losing its worker
        (the name holds the run and the trial) and that attempt's teardown never ran: it goes, and
        the create is made once more."""
        def create() -> None:
            self.custom.create_namespaced_custom_object(kube.OME_GROUP, kube.OME_VERSION, deployment.namespace,
                                                        PLURAL, deployment.manifest,
                                                        _request_timeout=kube.REQUEST_TIMEOUT_S)
        try:
            kube.asked_again_while_busy(create)
        except ApiException as error:
            if error.status != 409:
                raise
            self.teardown(deployment)
            kube.asked_again_while_busy(create)

    def wait_ready(self, deployment: OmeTrialDeployment, deadline: float,
                   interrupt: Callable[[], None] = carry_on) -> None:
        resource_version: str | None = None
        last_message = "no status yet"
        unschedulable_since: dict[str, tuple[float, float]] = {}  # pod -> (first seen, its grace from)
        while True:
            interrupt()  # between watch segments (WATCH_SEGMENT_S)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeploymentError(f"{KIND} {deployment.name} not Ready before the deadline "
                                      f"(deployment.ready_timeout_s); last status: {last_message}")
            try:
                for event in watch.Watch().stream(
                        self.custom.list_namespaced_custom_object, kube.OME_GROUP, kube.OME_VERSION,
                        deployment.namespace, PLURAL, field_selector=f"metadata.name={deployment.name}",
                        resource_version=resource_version, timeout_seconds=max(1, int(min(remaining, WATCH_SEGMENT_S))),
                        _request_timeout=WATCH_SEGMENT_S + kube.REQUEST_TIMEOUT_S):
                    obj = event["object"]
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    if event["type"] == "DELETED":
                        raise DeploymentError(f"{KIND} {deployment.name} was deleted while starting")
                    ready, last_message = _ready(obj)
                    if ready:
                        deployment.status = obj.get("status") or {}
                        self._keep_start_up(deployment)
                        deployment.interrupt, deployment.log_at_end = interrupt, True
                        return
            except ApiException as error:
                if error.status == 410:  # our resourceVersion expired: start over from now
                    resource_version = None
                elif kube.passing(error):
                    time.sleep(kube.PASSING_WAIT_S)  # the API is busy: ask again shortly, not at once
                else:
                    raise kube.explain(error, "watch", KIND, deployment.name, deployment.namespace) from None
            except (HTTPError, OSError):
                time.sleep(kube.PASSING_WAIT_S)  # the connection dropped: re-establish it from the last resourceVersion
            failure = self._pod_failure(deployment, unschedulable_since)
            if failure:
                raise DeploymentError(f"{KIND} {deployment.name}: {failure}")

    def _keep_start_up(self, deployment: OmeTrialDeployment) -> None:
        pods = self._engine_pods(deployment)
        if pods is None:
            deployment.log_path.write_text("(no log: the API did not list the engine pods at Ready)\n")
        else:
            pod_logs.keep_start_up(self.core, pods, deployment.log_path)

    def _engine_pods(self, deployment: OmeTrialDeployment) -> list | None:
        """The engine's pods; None when the API is briefly busy (429, 5xx, a dropped connection):
        not known this time, and the next look, seconds later, sees them (deadlines still hold)."""
        try:
            return self.core.list_namespaced_pod(
                deployment.namespace, label_selector=f"ome.io/inferenceservice={deployment.name}",
                _request_timeout=kube.REQUEST_TIMEOUT_S).items
        except ApiException as error:
            if kube.passing(error):
                return None
            raise kube.explain(error, "list pods of", KIND, deployment.name, deployment.namespace) from None
        except (HTTPError, OSError):
            return None

    def _pod_failure(self, deployment: OmeTrialDeployment,
                     unschedulable_since: dict[str, tuple[float, float]]) -> str | None:
        for pod in self._engine_pods(deployment) or []:
            reason = pod_failure(pod)
            if reason:
                return with_crash_log(reason, self.core, pod, deployment.log_path)
            if _unschedulable(pod):
                now = time.monotonic()
                first, grace_from = unschedulable_since.setdefault(pod.metadata.name, (now, now))
                if now - grace_from < self.settings.unschedulable_grace_s:
                    continue
                # An earlier trial's engine, deleted but held by a finalizer or its pods' grace period,
                # may still have the GPUs Ray gave this trial: waited for (as long as a teardown waits),
                # then the grace starts again.
                deleting = self._run_still_deleting(deployment)
                if now - first < DELETE_WAIT_S and deleting:
                    unschedulable_since[pod.metadata.name] = (first, now)
                    continue
                stuck = (f" (an earlier trial's {KIND}, still being deleted after {DELETE_WAIT_S} s, may hold its "
                         "GPUs)") if deleting else ""
                return (f"pod {pod.metadata.name} unschedulable for {self.settings.unschedulable_grace_s:.0f} s: "
                        f"{_unschedulable(pod)}{stuck}")
            else:
                unschedulable_since.pop(pod.metadata.name, None)
        return None

    def _run_still_deleting(self, deployment: OmeTrialDeployment) -> bool:
        """Whether another InferenceService of this run is still being deleted (or the API cannot say now)."""
        run = deployment.manifest["metadata"]["labels"][kube.RUN_LABEL]
        try:
            listed = self.custom.list_namespaced_custom_object(
                kube.OME_GROUP, kube.OME_VERSION, deployment.namespace, PLURAL,
                label_selector=f"{kube.RUN_LABEL}={run}", _request_timeout=kube.REQUEST_TIMEOUT_S)
        except (ApiException, HTTPError, OSError):
            return True  # asked again at the next look
        return any(item["metadata"].get("deletionTimestamp") for item in listed.get("items", [])
                   if item["metadata"]["name"] != deployment.name)

    def endpoint(self, deployment: OmeTrialDeployment) -> Endpoint:
        cluster_url = f"http://{deployment.name}.{deployment.namespace}.svc.cluster.local:{self.settings.port}"
        serving = ServingPods(self, deployment)
        mode = self.settings.endpoint
        if mode == "auto":
            mode = "in-cluster" if kube.in_cluster() else "port-forward"
        if mode == "in-cluster":
            return Endpoint(cluster_url, cluster_url, failure=serving.failure)
        if mode == "status-url":
            url = deployment.status.get("url")
            if not url:
                raise DeploymentError(f"{KIND} {deployment.name} is Ready but has no status.url")
            return Endpoint(url.rstrip("/"), cluster_url, failure=serving.failure)
        pods = [p for p in self._engine_pods(deployment) or [] if (p.status and p.status.phase == "Running")]
        if not pods:
            raise DeploymentError(f"{KIND} {deployment.name} is Ready but no engine pod is Running to forward to")
        deployment.forward = PortForward(self.api, deployment.namespace, pods[0].metadata.name, self.settings.port)
        return Endpoint(deployment.forward.url, cluster_url, failure=serving.failure, via="port-forward")

    def teardown(self, deployment: OmeTrialDeployment) -> None:
        # The pods' logs go with the delete: what the engine logged while it was benchmarked is read
        # first (reads begun within END_LOG_S), but not while the run is being stopped (a Ctrl-C:
        # the delete comes first then; Ray gives a trial's own end, `cleanup`, the time it needs).
        if deployment.log_at_end and not _stopping(deployment.interrupt):
            with contextlib.suppress(AutotunerError):  # a log is never worth a teardown
                pod_logs.keep_whole(self.core, self._engine_pods(deployment), deployment.log_path,
                                    time.monotonic() + END_LOG_S)
        try:
            self._delete(deployment)
        finally:
            if deployment.forward is not None:
                deployment.forward.close()
        # Gone before the trial ends, so its GPUs are free when Ray gives them to the next trial.
        if wait_for_names(self.settings, [(KIND, deployment.name)], DELETE_WAIT_S, api=self.api):
            print(f"[autotuner] warning: {KIND} {deployment.name} is still being deleted after {DELETE_WAIT_S} s "
                  "(a finalizer, its pods' grace period): the next trial's pods wait for the GPUs it holds, and "
                  "the run's end waits for it again", flush=True)

    def _delete(self, deployment: OmeTrialDeployment) -> None:
        """Delete the object, asked again while the API is busy (a delete is idempotent): an object
        left behind holds its GPUs until the run's end."""
        try:
            kube.asked_again_while_busy(lambda: self.custom.delete_namespaced_custom_object(
                kube.OME_GROUP, kube.OME_VERSION, deployment.namespace, PLURAL, deployment.name,
                body=client.V1DeleteOptions(propagation_policy="Foreground"), _request_timeout=kube.REQUEST_TIMEOUT_S))
        except ApiException as error:
            if error.status != 404:
                raise kube.explain(error, "delete", KIND, deployment.name, deployment.namespace) from None
        except (HTTPError, OSError) as error:
            raise DeploymentError(f"deleting {KIND} {deployment.name} in {deployment.namespace}: no answer "
                                  f"from the API ({type(error).__name__}); the run's end deletes it") from None


def _stopping(interrupt: Callable[[], None]) -> bool:
    try:
        interrupt()
    except Exception:  # the run's stop (trainables/trial.py: RunStopped)
        return True
    return False


def _ready(obj: dict[str, Any]) -> tuple[bool, str]:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            message = condition.get("message") or condition.get("reason") or f"Ready={condition.get('status')}"
            return condition.get("status") == "True", message
    return False, "no Ready condition yet"


class ServingPods:
    """Whether the engine pods that were serving when the trial's benchmark began still serve: a pod
    deleted, evicted, restarted or crash-looping during a stage fails the trial at once with the
    reason (as a crashed local engine does), instead of a stage of failed requests or its deadline.
    `failure()` is polled by the benchmark every fraction of a second: the pods are read at most
    every CHECK_S, and an API that does not answer is not taken for a failure."""

    CHECK_S = 2.0

    def __init__(self, deployer: "OmeDeployer", deployment: OmeTrialDeployment):
        self.deployer, self.deployment = deployer, deployment
        self.known = {pod.metadata.name: (pod.metadata.uid, _restarts(pod))
                      for pod in deployer._engine_pods(deployment) or []}
        self.checked, self.found = time.monotonic(), None

    def failure(self) -> str | None:
        if self.found or time.monotonic() - self.checked < self.CHECK_S:
            return self.found
        self.checked = time.monotonic()
        try:
            listed = self.deployer._engine_pods(self.deployment)
        except AutotunerError:
            listed = None
        if listed is None:
            return None  # the API did not answer this time: the engine may well be serving
        pods = {pod.metadata.name: pod for pod in listed}
        for name, (uid, restarts) in self.known.items():
            pod = pods.get(name)
            if pod is None or pod.metadata.uid != uid:
                self.found = f"engine pod {name} was deleted during the benchmark"
            elif pod.status and pod.status.phase == "Failed":
                why = " ".join(filter(None, [pod.status.reason, pod.status.message]))
                self.found = f"engine pod {name} failed during the benchmark: {why or 'phase Failed'}"
            elif _restarts(pod) > restarts:
                self.found = with_crash_log(f"engine pod {name} restarted during the benchmark{_last_exit(pod)}: "
                                            "its engine lost its state (cache, warm-up)",
                                            self.deployer.core, pod, self.deployment.log_path)
            elif reason := pod_failure(pod):
                self.found = with_crash_log(reason, self.deployer.core, pod, self.deployment.log_path)
            if self.found:
                self.deployment.log_at_end = False  # engine.log keeps the crash: the restarted run is not it
                return self.found
        return None


def with_crash_log(reason: str, core: client.CoreV1Api, pod, log_path: Path) -> str:
    """`reason`, and what the crashed engine's last run said about it (kept in engine.log)."""
    told = pod_logs.keep_crash(core, pod, log_path)
    return f"{reason}; its log: {told}" if told else reason


def _restarts(pod) -> int:
    return sum(status.restart_count or 0 for status in (pod.status.container_statuses or [] if pod.status else []))


def _last_exit(pod) -> str:
    for status in pod.status.container_statuses or []:
        killed = status.last_state.terminated if status.last_state else None
        if killed:
            return f" (container {status.name} last exited: {killed.reason or 'Error'}, code {killed.exit_code})"
    return ""


def pod_failure(pod) -> str | None:
    """Why an engine pod cannot come up, if it cannot: crash loop, OOM kill, image pull error."""
    for status in (pod.status.container_statuses or []) if pod.status else []:
        waiting = status.state.waiting if status.state else None
        if waiting and waiting.reason in FAILED_WAITING_REASONS:
            killed = status.last_state.terminated if status.last_state else None
            detail = f" (last exit: {killed.reason}, code {killed.exit_code})" if killed and killed.reason else ""
            return f"pod {pod.metadata.name} container {status.name}: {waiting.reason}{detail} {waiting.message or ''}".strip()
        for state in (status.state, status.last_state):
            terminated = state.terminated if state else None
            if terminated and terminated.reason == "OOMKilled":
                return f"pod {pod.metadata.name} container {status.name}: OOMKilled (exit code {terminated.exit_code})"
    return None


def _unschedulable(pod) -> str | None:
    for condition in (pod.status.conditions or []) if pod.status else []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            return condition.message or "Unschedulable"
    return None
