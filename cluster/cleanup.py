"""Find and delete the Kubernetes objects the tuner created, by label; a run's liveness is its Lease
(cluster/lease.py), the same from every host."""

from __future__ import annotations

import time

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from llm_autotuner.cluster import kube
from llm_autotuner.cluster.lease import KIND as LEASE, live_leases, run_lease_uid
from llm_autotuner.errors import DeploymentError
from llm_autotuner.task import OmeDeployment

OUR_KINDS = (("InferenceService", "inferenceservices"), ("BenchmarkJob", "benchmarkjobs"))


def delete_labelled(settings: OmeDeployment, selector: str = "", *, skip_live_runs: bool = False,
                    api: client.ApiClient | None = None) -> list[tuple[str, str]]:
    """Delete our InferenceServices and BenchmarkJobs matching `selector` in the task's namespace;
    with `skip_live_runs`, keep those whose run's Lease is live, and delete the expired Leases too
    (an object of a dead run that nobody deletes goes with its Lease, by garbage collection).
    Objects that no run Lease owns are leftovers (the Lease was deleted, or an earlier version made
    them). Returns (kind, name) removed or already on their way out."""
    api = api or kube.api_client(settings.kubeconfig, settings.context)
    custom = client.CustomObjectsApi(api)
    managed = ",".join(f"{k}={v}" for k, v in kube.MANAGED_BY.items())
    label_selector = f"{managed},{selector}" if selector else managed
    live, expired = live_leases(settings, api, label_selector) if skip_live_runs else (set(), [])
    removed = []
    for kind, plural in OUR_KINDS:
        try:
            listed = custom.list_namespaced_custom_object(kube.OME_GROUP, kube.OME_VERSION, settings.namespace, plural,
                                                          label_selector=label_selector,
                                                          _request_timeout=kube.REQUEST_TIMEOUT_S)
        except ApiException as error:
            if error.status == 404:
                continue  # that kind is not installed: nothing of it to clean
            raise kube.explain(error, "list", kind, "objects", settings.namespace) from None
        for item in listed.get("items", []):
            name = item["metadata"]["name"]
            if skip_live_runs and run_lease_uid(item) in live:
                continue
            if item["metadata"].get("deletionTimestamp"):
                # Already being deleted (a dead run's teardown, the garbage collector): it still holds
                # its GPUs, so it counts as removed and the caller waits for it to go.
                removed.append((kind, name))
                continue
            try:
                custom.delete_namespaced_custom_object(
                    kube.OME_GROUP, kube.OME_VERSION, settings.namespace, plural, name,
                    body=client.V1DeleteOptions(propagation_policy="Foreground"),
                    _request_timeout=kube.REQUEST_TIMEOUT_S)
            except ApiException as error:
                if error.status != 404:
                    raise DeploymentError(str(kube.explain(error, "delete", kind, name, settings.namespace))) from None
            removed.append((kind, name))
    coordination = client.CoordinationV1Api(api)
    for name in expired:
        try:
            coordination.delete_namespaced_lease(name, settings.namespace, propagation_policy="Background",
                                                 _request_timeout=kube.REQUEST_TIMEOUT_S)
        except ApiException as error:
            if error.status != 404:
                raise DeploymentError(str(kube.explain(error, "delete", LEASE, name, settings.namespace))) from None
        removed.append((f"expired {LEASE}", name))
    return removed


def wait_until_gone(settings: OmeDeployment, selector: str, timeout_s: float,
                    api: client.ApiClient | None = None) -> list[str]:
    """Wait until none of our objects matching `selector` is left (deletions finish on their own,
    after finalizers and pods' grace periods); the names still there at `timeout_s`."""
    custom = client.CustomObjectsApi(api or kube.api_client(settings.kubeconfig, settings.context))
    # No empty part: the API refuses a selector ending in "," (400).
    label_selector = ",".join([*(f"{k}={v}" for k, v in kube.MANAGED_BY.items()), *([selector] if selector else [])])
    deadline = time.monotonic() + timeout_s
    while True:
        left = []
        for kind, plural in OUR_KINDS:
            try:
                listed = custom.list_namespaced_custom_object(kube.OME_GROUP, kube.OME_VERSION, settings.namespace,
                                                              plural, label_selector=label_selector,
                                                              _request_timeout=kube.REQUEST_TIMEOUT_S)
            except ApiException as error:
                if error.status == 404:
                    continue
                if not kube.passing(error):
                    raise kube.explain(error, "list", kind, "objects", settings.namespace) from None
                left.append(f"{kind} objects (the API answered {error.status}: not known whether any is left)")
                continue
            except (HTTPError, OSError) as error:  # a dropped connection: asked again, as a busy API is
                left.append(f"{kind} objects (no answer from the API: {type(error).__name__})")
                continue
            left += [f"{kind} {item['metadata']['name']}" for item in listed.get("items", [])]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(1.0)


def wait_for_names(settings: OmeDeployment, removed: list[tuple[str, str]], timeout_s: float,
                   api: client.ApiClient | None = None) -> list[str]:
    """Wait until each deleted (kind, name) is gone (its finalizers and pods' grace periods done),
    so what it held (GPUs) is free; the ones still there at `timeout_s`."""
    custom = client.CustomObjectsApi(api or kube.api_client(settings.kubeconfig, settings.context))
    plurals = dict(OUR_KINDS)
    left = [(kind, name) for kind, name in removed if kind in plurals]
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        still = []
        for kind, name in left:
            try:
                custom.get_namespaced_custom_object(kube.OME_GROUP, kube.OME_VERSION, settings.namespace,
                                                    plurals[kind], name, _request_timeout=kube.REQUEST_TIMEOUT_S)
                still.append((kind, name))
            except ApiException as error:
                if error.status != 404:
                    still.append((kind, name))
            except (HTTPError, OSError):  # a dropped connection: asked again
                still.append((kind, name))
        left = still
        if left:
            time.sleep(1.0)
    return [f"{kind} {name}" for kind, name in left]
