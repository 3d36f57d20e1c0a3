"""Benchmark runner on OME: a BenchmarkJob per trial runs genai-bench inside the cluster.

The job writes genai-bench's result files to a PVC; the driver's pod mounts the same PVC
(`benchmark.benchmark_job.results_mount`), so stages are read and scored exactly as the direct
runner does, each as soon as its file appears. The job targets the engine's in-cluster URL with
an explicit model name (the controller's `inferenceService` form passes a wrong one).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from llm_autotuner.cluster import kube, manifests
from llm_autotuner.cluster.deployer import Endpoint, EngineSpec
from llm_autotuner.cluster.cleanup import wait_for_names
from llm_autotuner.cluster.lease import owner_reference
from llm_autotuner.cluster.ome import DELETE_WAIT_S, cluster_url
from llm_autotuner.secrets import api_key
from llm_autotuner.trainables.genai_bench import Stage, watch_stages
from llm_autotuner.trainables.warmup import warm_up
from llm_autotuner.errors import BenchmarkError
from llm_autotuner.objective import request_limits

PLURAL, KIND = "benchmarkjobs", "BenchmarkJob"
STATE_POLL_S = 2.0


class BenchmarkJobRunner:
    def __init__(self, task, run_id: str, api_backend: str):
        self.task = task
        self.settings = task.benchmark.benchmark_job
        self.ome = task.deployment
        self.run_id = run_id
        self.api_backend = api_backend

    def render(self, spec: EngineSpec) -> str:
        """The job that would load the engine of `spec` (a dry run)."""
        url = cluster_url(self.ome, spec)
        return manifests.to_yaml(self.manifest(self._name(spec.trial_id), spec.trial_id, Endpoint(url, url),
                                               spec.served_name))

    def _name(self, trial_id: str) -> str:
        return kube.resource_name(self.task.name, f"{trial_id}-bench", self.run_id)

    def manifest(self, name: str, trial_id: str, endpoint: Endpoint, model_name: str) -> dict:
        benchmark = self.task.benchmark
        return manifests.benchmark_job(
            name=name, namespace=self.ome.namespace,
            labels=kube.labels(self.task.name, self.run_id, trial_id),
            endpoint_url=endpoint.cluster_url, model_name=model_name,
            tokenizer=None,  # the CRD has no tokenizer field; the job's genai-bench finds its own
            task="text-to-text",
            traffic_scenarios=[benchmark.traffic_scenario], num_concurrency=list(benchmark.concurrency),
            max_time_per_iteration=benchmark.max_minutes_per_stage,
            max_requests_per_iteration=benchmark.max_requests_per_stage,
            output_storage_uri=f"{self.settings.output_storage_uri.rstrip('/')}/{self.run_id}/{trial_id}",
            image=self.settings.image,
        )

    def started_early(self, workdir: Path) -> contextlib.AbstractContextManager:
        """Nothing to start before the engine: the job is made once the engine is up."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def run(self, endpoint: Endpoint, model_name: str, workdir: Path) -> Iterator[Iterator[tuple[Stage, dict]]]:
        trial_id = workdir.name  # the trial's folder is named by its id
        name = self._name(trial_id)
        # Warmed up from here as the direct runner does: the job's first stage must not pay the
        # engine's cold start. The key, if any, is ours (the job cannot carry one: manifests.py).
        warm_up(endpoint.url, model_name, self.task.benchmark, self.api_backend, workdir / "warmup.json", api_key(),
                endpoint.failure)
        api = kube.api_client(self.ome.kubeconfig, self.ome.context)
        custom = client.CustomObjectsApi(api)
        manifest = self.manifest(name, trial_id, endpoint, model_name)
        # Owned by the run's Lease, as its InferenceService is (cluster/lease.py).
        manifest["metadata"]["ownerReferences"] = [owner_reference(self.ome, self.task.name, self.run_id, api)]
        (workdir / "benchmark_job.yaml").write_text(manifests.to_yaml(manifest))
        results = Path(self.settings.results_mount) / self.run_id / trial_id
        # Until the API says it refused the create, the job may exist (a lost answer, Ctrl-C
        # during the call): the `finally` deletes it by name.
        may_exist = True
        try:
            try:
                self._create(custom, name, manifest)
            except ApiException as error:
                # A 5xx (a webhook or etcd timing out) may come after the write was stored.
                may_exist = error.status >= 500
                raise BenchmarkError(str(kube.explain(error, "create", KIND, name, self.ome.namespace))) from None
            except (HTTPError, OSError) as error:  # deleted below, in case the API stored it
                raise BenchmarkError(f"creating {KIND} {name} in {self.ome.namespace}: no answer from the API "
                                     f"({type(error).__name__}); deleted it in case it was made") from None
            yield watch_stages(self.task.benchmark, results, _JobState(custom, self.ome.namespace, name),
                               self.settings.timeout_s, request_limits(self.task.limits))
        finally:
            if may_exist:
                self._delete(custom, name)

    def _create(self, custom: client.CustomObjectsApi, name: str, manifest: dict) -> None:
        """Create the job, asked again while the API is busy (429, 5xx, a lost answer): a busy API
        server is no verdict on the config. A 409 means an attempt before was stored though its
        answer was lost: that job goes (and is waited for, so two never run against one engine)
        and the create is made once more."""
        def create() -> None:
            custom.create_namespaced_custom_object(kube.OME_GROUP, kube.OME_VERSION, self.ome.namespace, PLURAL,
                                                   manifest, _request_timeout=kube.REQUEST_TIMEOUT_S)
        try:
            kube.asked_again_while_busy(create)
        except ApiException as error:
            if error.status != 409:
                raise
            self._delete(custom, name)
            if wait_for_names(self.ome, [(KIND, name)], DELETE_WAIT_S, api=custom.api_client):
                raise BenchmarkError(f"{KIND} {name} in {self.ome.namespace}: an earlier attempt's job was "
                                     f"still being deleted after {DELETE_WAIT_S} s") from None
            kube.asked_again_while_busy(create)

    def _delete(self, custom: client.CustomObjectsApi, name: str) -> None:
        """Delete the job (asked again while the API is busy: a delete is idempotent); gone already is fine."""
        try:
            kube.asked_again_while_busy(lambda: custom.delete_namespaced_custom_object(
                kube.OME_GROUP, kube.OME_VERSION, self.ome.namespace, PLURAL, name,
                body=client.V1DeleteOptions(propagation_policy="Foreground"),
                _request_timeout=kube.REQUEST_TIMEOUT_S))
        except ApiException as error:
            if error.status != 404:
                raise BenchmarkError(str(kube.explain(error, "delete", KIND, name, self.ome.namespace))) from None
        except (HTTPError, OSError) as error:
            raise BenchmarkError(f"deleting {KIND} {name} in {self.ome.namespace}: no answer from the API "
                                 f"({type(error).__name__}); the run's end deletes it") from None


class _JobState:
    """Says why the job ended early, or None while it runs; asks the API at most every few seconds."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str, name: str):
        self.custom, self.namespace, self.name = custom, namespace, name
        self.asked = 0.0

    def __call__(self) -> str | None:
        if time.monotonic() - self.asked < STATE_POLL_S:
            return None
        self.asked = time.monotonic()
        try:
            job = self.custom.get_namespaced_custom_object(kube.OME_GROUP, kube.OME_VERSION, self.namespace,
                                                           PLURAL, self.name, _request_timeout=kube.REQUEST_TIMEOUT_S)
        except ApiException as error:
            if kube.passing(error):
                return None  # the API is busy (429, 5xx): asked again in a few seconds
            return str(kube.explain(error, "read", KIND, self.name, self.namespace))
        except (HTTPError, OSError):
            return None  # the connection dropped: the same
        status = job.get("status") or {}
        state = status.get("state")
        if state == "Failed":
            # The CRD's status names its text failureMessage (and details): a `message` would be pruned.
            return f"{KIND} {self.name} failed: {status.get('failureMessage') or status.get('details') or 'no details'}"
        if state == "Completed":
            # Its files may still be on their way through the volume: give them one more look.
            return f"{KIND} {self.name} completed, but its results are not under the driver's results_mount"
        return None
