"""A run's liveness kept in the cluster: a `coordination.k8s.io` Lease that the run's driver renews.

A PID means nothing to another host (or to a second driver pod); a Lease says the same to every
client of the cluster. Every object a run creates carries an ownerReference to its Lease, so:
- at the run's end the driver deletes its Lease, and Kubernetes' garbage collector deletes what of
  the run is still there (a teardown that failed, a trial Ray cut off);
- a run killed outright stops renewing; once its Lease is older than LEASE_S (+ SKEW_S for the
  clocks of two hosts), `autotuner cleanup` from any host, or the next run of the task, deletes the
  Lease and, with it, the run's objects; a live run's objects are never touched. On the run's own
  host there is no need to wait: the Lease names its holder's process, and a holder that is not
  running there any more is dead at once;
- a driver running in a pod (AUTOTUNER_POD_NAME/UID/NAMESPACE from the downward API, see
  deploy/kuberay/) makes its pod the Lease's owner: the pod deleted, everything of the run goes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from llm_autotuner.cluster import kube
from llm_autotuner.cluster.procs import start_time
from llm_autotuner.cluster.records import host_id
from llm_autotuner.errors import InfrastructureError
from llm_autotuner.task import OmeDeployment as OmeSettings

GROUP_VERSION, KIND = "coordination.k8s.io/v1", "Lease"
RENEW_S = 15  # a renewal is tried every RENEW_S, each given at most RENEW_S for its request
# leaseDurationSeconds: how long a run may go without renewing before it counts as dead. Between
# two renewals at most RENEW_S + kube.CREDENTIAL_PLUGIN_TIMEOUT_S (45 s, a token refreshed) +
# RENEW_S = 75 s go by; two renewals in a row that time out take 60 s and the third lands by 90 s.
LEASE_S = 90
SKEW_S = 30  # tolerated difference between the clocks of the run's host and of the one judging it
# The driver's pod, from the downward API (cluster/kuberay.py sets them): variable -> pod field.
POD_ENV = {"AUTOTUNER_POD_NAME": "metadata.name", "AUTOTUNER_POD_UID": "metadata.uid",
           "AUTOTUNER_POD_NAMESPACE": "metadata.namespace"}
HOLDER = "autotuner.io/holder"  # annotation: the driver's host and process, for a judge on the same host


def lease_name(experiment: str, run_id: str) -> str:
    return kube.resource_name(experiment, "run", run_id)


def _micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _driver_pod(namespace: str) -> list[dict]:
    """The driver's own pod as the Lease's owner, when the driver runs in one in the same namespace
    (an owner in another namespace would read to the garbage collector as absent: it would delete
    the Lease at once)."""
    name, uid, pod_namespace = (os.environ.get(variable) for variable in POD_ENV)
    if name and uid and pod_namespace == namespace:
        return [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]
    return []


class RunLease:
    """Held for the whole run (`with RunLease(...)`): created at the start, renewed from a thread,
    deleted at the end."""

    def __init__(self, settings: OmeSettings, experiment: str, run_id: str, api: client.ApiClient | None = None,
                 renew_s: float = RENEW_S):
        self.renew_s = renew_s
        self.namespace, self.name = settings.namespace, lease_name(experiment, run_id)
        self.labels = kube.labels(experiment, run_id)
        self.api = client.CoordinationV1Api(api or kube.api_client(settings.kubeconfig, settings.context))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLease":
        now = _micro_time(datetime.now(timezone.utc))
        holder = {"host": host_id(), "pid": os.getpid(), "started": start_time(os.getpid())}
        body = {"apiVersion": GROUP_VERSION, "kind": KIND,
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels,
                             "annotations": {HOLDER: json.dumps(holder)},
                             "ownerReferences": _driver_pod(self.namespace)},
                "spec": {"holderIdentity": f"autotuner on {holder['host'].split('/')[0]} pid {holder['pid']}",
                         "leaseDurationSeconds": LEASE_S, "acquireTime": now, "renewTime": now}}
        try:
            self.api.create_namespaced_lease(self.namespace, body, _request_timeout=kube.REQUEST_TIMEOUT_S)
        except ApiException as error:
            raise kube.explain(error, "create", KIND, self.name, self.namespace) from None
        self._thread = threading.Thread(target=self._renew, name="autotuner-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        renewed, warned, lost = time.monotonic(), False, False
        while not self._stop.wait(self.renew_s):
            patch = {"spec": {"renewTime": _micro_time(datetime.now(timezone.utc))}}
            try:
                # A request the API leaves unanswered (a stuck load balancer) is given up when the
                # next renewal is due, not after kube.REQUEST_TIMEOUT_S: that one tries afresh.
                self.api.patch_namespaced_lease(self.name, self.namespace, patch,
                                                _request_timeout=min(kube.REQUEST_TIMEOUT_S, self.renew_s))
                renewed, warned = time.monotonic(), False
                continue
            except ApiException as error:
                if error.status == 404:
                    if not lost:  # the trials' deploys refuse from now on (owner_reference)
                        lost = True
                        print(f"[autotuner] warning: this run's Lease {self.name} was deleted (an expired run's "
                              "cleanup after this host stalled?): Kubernetes is removing the run's objects",
                              flush=True)
                    continue
                problem = str(kube.explain(error, "renew", KIND, self.name, self.namespace))
            except Exception as error:  # noqa: BLE001 - a dead renewal thread would let the run read as dead
                problem = str(error) or type(error).__name__
            # A few missed renewals are expected (a busy API); past LEASE_S the run reads as dead to a
            # cleanup from anywhere, which deletes its InferenceServices under the running trials.
            late = time.monotonic() - renewed
            if not warned and late > LEASE_S / 2:
                warned = True
                print(f"[autotuner] warning: this run's Lease {self.name} not renewed for {late:.0f} s ({problem}); "
                      f"after {LEASE_S} s a cleanup from any host may judge the run dead and delete its "
                      "InferenceServices", flush=True)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            # A renewal under way may be waiting for a credential plugin, then for the API.
            self._thread.join(kube.CREDENTIAL_PLUGIN_TIMEOUT_S + kube.REQUEST_TIMEOUT_S + 1)
        try:
            # Background: the Lease goes now, the garbage collector removes any object left after it.
            self.api.delete_namespaced_lease(self.name, self.namespace, propagation_policy="Background",
                                             _request_timeout=kube.REQUEST_TIMEOUT_S)
        except ApiException as error:
            if error.status != 404:
                print(f"[autotuner] warning: {kube.explain(error, 'delete', KIND, self.name, self.namespace)}",
                      flush=True)
        except (HTTPError, OSError) as error:
            print(f"[autotuner] warning: could not delete this run's Lease {self.name} ({error}): it expires "
                  f"in {LEASE_S} s and `autotuner cleanup` then removes it", flush=True)


def owner_reference(settings: OmeSettings, experiment: str, run_id: str, api: client.ApiClient) -> dict:
    """The ownerReference every object of the run carries: to the run's Lease."""
    name = lease_name(experiment, run_id)
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(name, settings.namespace,
                                                                    _request_timeout=kube.REQUEST_TIMEOUT_S)
    except ApiException as error:
        if error.status == 404:
            raise InfrastructureError(f"this run's Lease {name} in namespace {settings.namespace} is gone (its "
                                  "driver stopped renewing it, or a cleanup judged the run dead): nothing more is "
                                  "deployed for it") from None
        raise kube.explain(error, "read", KIND, name, settings.namespace) from None
    return {"apiVersion": GROUP_VERSION, "kind": KIND, "name": name, "uid": lease.metadata.uid}


def live_leases(settings: OmeSettings, api: client.ApiClient, label_selector: str) -> tuple[set[str], list[str]]:
    """(uids of the Leases of live runs, names of the expired ones) among the Leases matching the selector."""
    try:
        leases = client.CoordinationV1Api(api).list_namespaced_lease(
            settings.namespace, label_selector=label_selector, _request_timeout=kube.REQUEST_TIMEOUT_S).items
    except ApiException as error:
        raise kube.explain(error, "list", KIND, "objects", settings.namespace) from None
    now, live, expired = datetime.now(timezone.utc), set(), []
    for lease in leases:
        renewed = lease.spec.renew_time or lease.spec.acquire_time or lease.metadata.creation_timestamp
        duration = timedelta(seconds=(lease.spec.lease_duration_seconds or LEASE_S) + SKEW_S)
        fresh = renewed is not None and renewed.astimezone(timezone.utc) + duration > now
        if fresh and not _holder_gone(lease):
            live.add(lease.metadata.uid)
        else:
            expired.append(lease.metadata.name)
    return live, expired


def _holder_gone(lease) -> bool:
    """The Lease's driver was on this host and its process is not running any more."""
    try:
        holder = json.loads((lease.metadata.annotations or {}).get(HOLDER, ""))
        return holder["host"] == host_id() and start_time(holder["pid"]) != holder["started"]
    except (ValueError, KeyError, TypeError):
        return False  # not ours to judge: the clock decides


def run_lease_uid(obj: dict) -> str | None:
    """The uid of the run Lease that owns `obj`, if one does."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion") == GROUP_VERSION:
            return ref.get("uid")
    return None
