"""An in-process Kubernetes API server emulator, for testing cluster code with the official client.

No API server can run on the test machines, and mocking the `kubernetes` client hides the bugs
that matter (wrong URLs, wrong patch content types, watch resumption, port-forward framing). So the
tests start this emulator instead: a real HTTP server on 127.0.0.1 that speaks the Kubernetes REST
and watch protocols, keeps objects in memory, and lets a test play the controller (react to
creates, set status conditions, inject pods in CrashLoopBackOff) and inject faults (403, dropped
watches).

What it reproduces, point by point, and where each behaviour comes from (kubernetes/kubernetes
at v1.30 unless named; "docs" is kubernetes.io/docs):
- REST: any `/api/v1/...` and `/apis/{group}/{version}/...` resource is served generically; a
  collection is namespaced when its URL has `namespaces/{ns}/`, cluster-scoped otherwise; a
  collection URL without a namespace lists (and watches) across namespaces. Objects are stored per
  (group, version): no conversion. [docs: reference/using-api/api-concepts]
- Status subresource for every resource: create and updates of the main resource ignore `.status`,
  `/status` updates change only `.status`; `metadata.generation` grows when anything outside
  metadata and status changes; a no-op update emits no event; an update naming an old
  resourceVersion gets 409 Conflict. [staging/src/k8s.io/apiserver/pkg/registry/rest/update.go,
  docs: concepts/extend-kubernetes/api-extension/custom-resources#status-subresource]
- Validation on create, 422 Invalid in the API server's wording: `metadata.name` a lowercase RFC
  1123 subdomain (<= 253; a Service's an RFC 1035 label, <= 63); label keys an optional DNS
  subdomain prefix and a name <= 63, label values <= 63, both `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
  [staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go, pkg/api/validation/objectmeta.go]
- Custom resources of OME's kinds (InferenceService, BenchmarkJob, ClusterServingRuntime) are
  validated on create against OME's own CRD schemas (tests/data/crds): a missing required field
  or a wrong type is a 422 ("spec.model: Required value"), as the API server's structural-schema
  validation answers. Unknown fields are accepted (the server prunes them under the default field
  validation; it would reject them only with fieldValidation=Strict, which our client does not set).
  [staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/validation]
- Watches: from "" or "0" the current state first, as ADDED events, then changes; from a
  resourceVersion, the changes after it. History compaction with `keep_history(n)`: a watch from a
  version older than the window kept gets HTTP 200 and one `ERROR` event whose object is a `Status`
  with code 410, reason `Expired`, "too old resource version: X (Y)", then the stream ends; the
  client must list again. `expired_watches` records the versions refused. Faults: watches dropped
  abruptly or gracefully after n events (`drop_watches_after`). [staging/src/k8s.io/apiserver/pkg/
  storage/cacher/watch_cache.go (tooOldResourceVersion), etcd compaction every 5 min by default:
  kube-apiserver --etcd-compaction-interval]
- Deletion: a Background delete of an object with no finalizer removes it at once (DELETED). An
  object with a finalizer is only marked: the DELETE returns it with `metadata.deletionTimestamp`
  (MODIFIED), GETs keep returning it, a second DELETE returns it unchanged, and it is removed when
  its finalizers are done. Finalizers emulated: `set_deletion_delay(plural, s)` (a controller's
  finalizer: OME's on an InferenceService; a pod's termination grace period, 30 s by default) and
  `foregroundDeletion` (a Foreground delete: the owner stays until every dependent with
  `blockOwnerDeletion: true` is gone; it always goes through the garbage collector, so even an
  object without dependents is removed only a moment later). The delete hooks (a controller's
  cleanup) run when the deletion begins. [docs: concepts/overview/working-with-objects/finalizers,
  concepts/architecture/garbage-collection#foreground-deletion; pkg/controller/garbagecollector]
- Garbage collection by ownerReferences: once all of an object's owners are gone (deleted, or
  never existing: a dangling uid), it is deleted (Background) after `set_gc_delay` seconds (0.3 by
  default; on a busy cluster the real one can take much longer); an Orphan delete removes the
  owner's reference from its dependents instead. `collected` names what it deleted. Owners are
  matched by uid only (the real collector also checks the owner's kind and, for namespaced
  dependents, that the owner is in the same namespace). [pkg/controller/garbagecollector/
  garbagecollector.go attemptToDeleteItem; docs: concepts/architecture/garbage-collection]
- Authentication, when `accept_tokens(...)` names the bearer tokens it knows: any other request is
  answered 401 with a `Status` whose message is "Unauthorized" (a kubeconfig's wrong or expired
  token, or a credential plugin that failed: the client then sends no token at all).
  [staging/src/k8s.io/apiserver/pkg/endpoints/filters/authentication.go]
- Namespaces: every namespace exists unless `remove_namespace(ns)`; then a create in it is a 404
  NotFound `namespaces "ns" not found`, while a list in it is an empty list (both as the real API
  server answers). [plugin/pkg/admission/namespace/lifecycle]
- Port-forward: the WebSocket protocol of `pods/{name}/portforward` (v4.channel.k8s.io framing:
  a data and an error channel per port, each opened with its port number), relayed to a real TCP
  address set with `set_pod_target`; 404 for a pod that does not exist. Port-forwards and
  kubeconfig clients honour HTTP_PROXY; keep 127.0.0.1 in NO_PROXY when a proxy is set.
  [staging/src/k8s.io/apiserver/pkg/util/wsstream, kubelet portforward]
- Faults on demand: `fail_next` answers matching requests with any status (403, 404, 500...).

Not reproduced: authentication and authorization (RBAC is checked by the tests against the
requests recorded here), admission (quota, OwnerReferencesPermissionEnforcement), pruning of
unknown fields, schema checks of kinds other than OME's and of updates (creates only), `limit`/`continue` paging, watch
bookmarks, server-side apply, field managers, and a scheduler or kubelet (tests/fake_ome.py plays
OME's controller and the kubelet for InferenceServices).
"""

import base64
import copy
import functools
import hashlib
import json
import re
import secrets
import select
import socket
import struct
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

import kubernetes.client

from tests.crd_schema import field_errors

OME_GROUP = "ome.io"
OME_VERSION = "v1beta1"
_STOP_JOIN_SECONDS = 5.0


class RecordedRequest(NamedTuple):
    """One request the emulator received: `query` maps names to (last) values, `body` is parsed JSON."""

    method: str
    path: str
    query: dict
    body: object


class Deletion(NamedTuple):
    """One object deleted through the API, with the propagation policy the client asked for."""

    group: str
    version: str
    namespace: str | None
    plural: str
    name: str
    propagation_policy: str | None


class _Key(NamedTuple):
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str


class _Route(NamedTuple):
    """A parsed resource URL; `name` and `sub` (a subresource such as `status`) may be None."""

    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    sub: str | None

    def key(self, name: str) -> _Key:
        return _Key(self.group, self.version, self.plural, self.namespace, name)

    def resource(self) -> str:
        """The resource as the real server names it in messages, e.g. `inferenceservices.ome.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


class _Event(NamedTuple):
    rv: int
    type: str
    key: _Key
    obj: dict


class _ApiError(Exception):
    """Raised inside request handling; becomes a Kubernetes `Status` response."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                      "'.', and must start and end with an alphanumeric character")


def _invalid_metadata(plural: str, meta: dict) -> list[str]:
    """What the API server would refuse in `meta`, each as `field: Invalid value: ...`."""
    problems = []
    name = meta["name"]
    if plural == "services":
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            problems.append(f'metadata.name: Invalid value: "{name}": a DNS-1035 label must consist of lower case '
                            "alphanumeric characters or '-', start with an alphabetic character, and end with an "
                            "alphanumeric character")
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        problems.append(f'metadata.name: Invalid value: "{name}": {_SUBDOMAIN_MESSAGE}')
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix))) or len(label) > 63 \
                or not _QUALIFIED_NAME.match(label):
            problems.append(f'metadata.labels: Invalid value: "{key}": name part must consist of alphanumeric '
                            "characters, '-', '_' or '.', and must start and end with an alphanumeric character")
        if not isinstance(value, str) or len(value) > 63 or (value and not _QUALIFIED_NAME.match(value)):
            problems.append(f'metadata.labels: Invalid value: "{value}": a valid label must be an empty string or '
                            "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                            "alphanumeric character")
    return problems


class KubeEmulator:
    """A Kubernetes API server on 127.0.0.1 with an in-memory store; thread-safe.

    Use as a context manager, or call `start()` and `stop()`. Stored objects are never mutated in
    place (every change stores a new dict), so watch events can share them safely; callers always
    get deep copies.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()  # guards all state below; notified on every event
        self._objects: dict[_Key, dict] = {}
        self._events: list[_Event] = []
        self._rv = 1000  # never list "0": to a watch, resourceVersion 0 means "any", not "from the start"
        self._faults: list[dict] = []
        self._lost_answers: list[tuple[str, re.Pattern, int | None]] = []  # served, then the answer lost
        self._stalled_forwards = 0  # port-forward handshakes left unanswered
        self._stalled_requests: list[dict] = []  # (method, path, times) of requests left unanswered
        self._drop_rule: dict | None = None
        self._history: int | None = None  # events kept for watches to resume from (None: all)
        self.expired_watches: list[str] = []  # resourceVersions a watch was refused for (410)
        self._gc_delay_s = 0.3  # how long the garbage collector takes to act on a deleted owner
        # plural -> what is invalid in an object of it (the CRD's schema): OME's kinds by default
        self._schemas: dict[str, Callable[[dict], list[str]]] = {
            plural: functools.partial(field_errors, schema) for plural, schema in (
                ("inferenceservices", "inferenceservice.schema.json"), ("benchmarkjobs", "benchmarkjob.schema.json"),
                ("clusterservingruntimes", "clusterservingruntime.schema.json"))}
        self.collected: list[str] = []  # "plural/name" of objects the garbage collector deleted
        self._hooks: dict[str, dict[str, list[Callable]]] = {"create": defaultdict(list), "delete": defaultdict(list)}
        self._requests: list[RecordedRequest] = []
        self._deletions: list[Deletion] = []
        self._deletion_delays: dict[str, float] = {}  # plural -> seconds an API delete takes
        self._tokens: set[str] | None = None  # bearer tokens accepted (None: no authentication)
        self._absent_namespaces: set[str] = set()
        self._pod_targets: dict[tuple[str, str, int], tuple[str, int]] = {}
        self._pod_logs: dict[tuple[str, str, str, bool], Callable[[], str]] = {}  # (ns, pod, container, previous)
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()  # handler, relay and hook threads that stop() joins
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None

    # ---- lifecycle and client helpers ----

    def start(self) -> "KubeEmulator":
        """Listen on a free port of 127.0.0.1 and serve in a background thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.emulator = self
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="kube-emulator", daemon=True
        )  # a short poll interval keeps stop() fast
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wait for every thread the emulator started, including open watches."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            connections = list(self._connections)
        if self._server is None:
            return
        self._server.shutdown()
        for conn in connections:  # unblocks handlers waiting on keep-alive reads or websocket frames
            _shutdown(conn)
        self._server.server_close()
        self._serve_thread.join(_STOP_JOIN_SECONDS)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(_STOP_JOIN_SECONDS)
        self._server = None

    def __enter__(self) -> "KubeEmulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client_configuration(self) -> kubernetes.client.Configuration:
        """A client configuration for this emulator (plain HTTP, no credentials); not made the default.

        The proxy is set explicitly because the client otherwise takes one from HTTP_PROXY.
        """
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.proxy = None
        return configuration

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.client.ApiClient(self.client_configuration())

    def write_kubeconfig(self, path, namespace: str = "default") -> Path:
        """Write a kubeconfig whose current context points at this emulator; JSON is valid YAML.

        A kubeconfig cannot turn off a proxy from the environment: with HTTP_PROXY set, NO_PROXY
        must cover 127.0.0.1.
        """
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
            ],
            "current-context": "emulator",
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2))
        return path

    # ---- test control ----

    def fail_next(
        self, method: str, path_regex: str, status: int, reason: str = "Forbidden", message: str = "", times: int = 1
    ) -> None:
        """Answer the next `times` requests whose method (or `*`) and path match with a `Status` error."""
        fault = {
            "method": method.upper(),
            "path": re.compile(path_regex),
            "error": _ApiError(status, reason, message or f"injected {status} {reason}"),
            "times": times,
        }
        with self._lock:
            self._faults.append(fault)

    def accept_tokens(self, *tokens: str) -> None:
        """Answer 401 to every request that does not carry one of these bearer tokens."""
        with self._lock:
            self._tokens = set(tokens)

    def remove_namespace(self, ns: str) -> None:
        """Make `ns` a namespace that does not exist (creates in it are refused with 404)."""
        with self._lock:
            self._absent_namespaces.add(ns)

    def stall_port_forwards(self, times: int = 1) -> None:
        """Leave the next `times` port-forward handshakes unanswered until the emulator stops, as
        an API server (or a VPN) that stops answering mid-connect does."""
        with self._lock:
            self._stalled_forwards = times

    def stall_next(self, method: str, path_regex: str, times: int = 1) -> None:
        """Leave the next `times` requests whose method and path match unanswered (nothing carried
        out) until the emulator stops, as an API server behind a stuck load balancer does: only the
        client's own deadline ends the wait."""
        with self._lock:
            self._stalled_requests.append({"method": method.upper(), "path": re.compile(path_regex), "times": times})

    def _stalled(self, method: str, path: str) -> bool:
        """True once a stalled request's wait ended (the emulator stopping): it gets no answer."""
        with self._lock:
            rule = next((r for r in self._stalled_requests if r["method"] == method and r["path"].search(path)), None)
            if rule is None:
                return False
            rule["times"] -= 1
            if rule["times"] <= 0:
                self._stalled_requests.remove(rule)
            while not self._stopping:
                self._lock.wait()
            return True

    def lose_answer_to_next(self, method: str, path_regex: str, instead: int | None = None) -> None:
        """Carry out the next request whose method and path match, then close its connection
        without an answer, as when a load balancer or a network drop cuts it; or, with `instead`
        (500, 504), answer that error, as an API server whose etcd or webhook timed out after the
        write was stored does. Either way the change is made and the client cannot tell."""
        with self._lock:
            self._lost_answers.append((method.upper(), re.compile(path_regex), instead))

    def drop_watches_after(self, n_events: int, times: int | None = 1, abrupt: bool = True) -> None:
        """Cut the next `times` watch connections (None: all) right after they have sent `n_events` events.

        Each watch counts the events it sent since it was opened. `abrupt` closes the socket in the
        middle of the chunked response, which the client sees as a broken connection (urllib3
        `ProtocolError`); otherwise the response ends cleanly, like a server-side watch timeout.
        """
        with self._lock:
            self._drop_rule = {"after": n_events, "times": times, "abrupt": abrupt}

    def keep_history(self, n_events: int | None) -> None:
        """Keep only the last `n_events` events for watches to resume from (None: all)."""
        with self._lock:
            self._history = n_events

    def on_create(self, plural: str, callback: Callable[[dict], None]) -> None:
        """Call `callback(obj)` in a background thread after each object of `plural` is created."""
        with self._lock:
            self._hooks["create"][plural].append(callback)

    def on_delete(self, plural: str, callback: Callable[[dict], None]) -> None:
        """Call `callback(obj)` in a background thread after each object of `plural` is deleted."""
        with self._lock:
            self._hooks["delete"][plural].append(callback)

    def set_deletion_delay(self, plural: str, seconds: float) -> None:
        """Make API deletes of `plural` take `seconds`, as with a finalizer (see the module docstring)."""
        with self._lock:
            self._deletion_delays[plural] = seconds

    def set_gc_delay(self, seconds: float) -> None:
        """How long the garbage collector takes to notice an owner gone (real: from well under a
        second to minutes on a busy cluster)."""
        with self._lock:
            self._gc_delay_s = seconds

    def set_status(self, group: str, version: str, ns: str | None, plural: str, name: str, status: dict) -> dict:
        """Merge `status` into the object's `.status` (JSON merge patch) and emit MODIFIED; KeyError if absent."""
        key = _Key(group, version, plural, ns, name)
        with self._lock:
            old = self._get(key)
            new = copy.deepcopy(old)
            new["status"] = _merge_patch(old.get("status") or {}, status)
            return self._modify(key, new)

    def add_condition(
        self,
        group: str,
        version: str,
        ns: str | None,
        plural: str,
        name: str,
        type: str,
        status: str = "True",
        reason: str = "",
        message: str = "",
    ) -> dict:
        """Set the `.status.conditions` entry of that type (replacing an older one) and emit MODIFIED."""
        condition = {
            "type": type,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now(),
        }
        key = _Key(group, version, plural, ns, name)
        with self._lock:
            old = self._get(key)
            new = copy.deepcopy(old)
            conditions = new.setdefault("status", {}).setdefault("conditions", [])
            conditions[:] = [c for c in conditions if c.get("type") != type] + [condition]
            return self._modify(key, new)

    def put(self, group: str, version: str, ns: str | None, plural: str, obj: dict) -> dict:
        """Create or replace an object as a controller would, status included, emitting ADDED or MODIFIED."""
        key = _Key(group, version, plural, ns, obj["metadata"]["name"])
        with self._lock:
            if key in self._objects:
                return self._modify(key, copy.deepcopy(obj))
            return self._insert(key, copy.deepcopy(obj))

    def delete(self, group: str, version: str, ns: str | None, plural: str, name: str) -> dict:
        """Delete an object and emit DELETED; KeyError if absent."""
        with self._lock:
            return self._remove(_Key(group, version, plural, ns, name))

    def put_pod(self, ns: str, pod: dict) -> dict:
        """Create or replace a pod, filling the fields a real pod always has so typed clients can parse it."""
        return self.put("", "v1", ns, "pods", _complete_pod(pod))

    def delete_pod(self, ns: str, name: str) -> dict:
        return self.delete("", "v1", ns, "pods", name)

    def put_event(self, ns: str, event: dict) -> dict:
        """Create or replace a core v1 Event (an empty `involvedObject` is filled in if missing)."""
        event = {"apiVersion": "v1", "kind": "Event", "involvedObject": {}, **event}
        return self.put("", "v1", ns, "events", event)

    def set_pod_target(self, ns: str, pod_name: str, port: int, address: tuple[str, int]) -> None:
        """Make port-forwards to `port` of that pod connect to the real TCP `address`."""
        with self._lock:
            self._pod_targets[(ns, pod_name, port)] = address

    def set_pod_log(self, ns: str, pod_name: str, container: str, read: Callable[[], str],
                    previous: bool = False) -> None:
        """Serve `read()` as that container's log (`previous`: of its run before the last restart).
        Served only while the kubelet would have one: the container started (its run before, once
        it has restarted), and only while the pod exists."""
        with self._lock:
            self._pod_logs[(ns, pod_name, container, previous)] = read

    def objects(self, plural: str, ns: str | None = None) -> list[dict]:
        """Copies of the stored objects of `plural` (any group), in one namespace or all (ns=None)."""
        with self._lock:
            return [
                copy.deepcopy(obj)
                for key, obj in self._objects.items()
                if key.plural == plural and (ns is None or key.namespace == ns)
            ]

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def deletions(self) -> list[Deletion]:
        """A snapshot of every deletion made through the API, oldest first."""
        with self._lock:
            return list(self._deletions)

    # ---- store (callers hold self._lock) ----

    def _get(self, key: _Key) -> dict:
        if key not in self._objects:
            raise KeyError(f"{key.plural} {key.namespace}/{key.name} does not exist")
        return self._objects[key]

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, type_: str, key: _Key, obj: dict) -> None:
        self._events.append(_Event(self._rv, type_, key, obj))
        self._lock.notify_all()

    def _insert(self, key: _Key, obj: dict) -> dict:
        """Store a new object, filling the metadata the server owns."""
        obj.setdefault("apiVersion", f"{key.group}/{key.version}" if key.group else key.version)
        meta = obj.setdefault("metadata", {})
        meta["name"] = key.name
        if key.namespace is not None:
            meta["namespace"] = key.namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1, resourceVersion=self._next_rv())
        self._objects[key] = obj
        self._emit("ADDED", key, obj)
        self._run_hooks("create", key, obj)
        if self._owners_gone(obj):
            self._collect_later()
        return copy.deepcopy(obj)

    def _modify(self, key: _Key, new: dict) -> dict:
        """Store `new` in place of the current object, keeping the metadata the server owns."""
        old = self._objects[key]
        meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        meta["generation"] = old["metadata"]["generation"] + (_spec(new) != _spec(old))
        if new == old:
            return copy.deepcopy(old)
        meta["resourceVersion"] = self._next_rv()
        self._objects[key] = new
        self._emit("MODIFIED", key, new)
        return copy.deepcopy(new)

    def _remove(self, key: _Key, hooks: bool = True) -> dict:
        old = self._get(key)
        del self._objects[key]
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit("DELETED", key, gone)
        if hooks:
            self._run_hooks("delete", key, gone)
        if self._dependents(old["metadata"]["uid"]):
            self._collect_later()
        return copy.deepcopy(gone)

    def _begin_deletion(self, key: _Key, policy: str | None) -> dict:
        """Delete as the API server and its garbage collector do (see the module docstring): at once
        for a Background (or Orphan) delete of an object without a finalizer; otherwise mark it
        (deletionTimestamp, finalizers) and remove it once the delete hooks ran, its deletion delay
        passed and, for a Foreground delete, its blocking dependents are gone."""
        old = self._get(key)
        if old["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(old)
        uid = old["metadata"]["uid"]
        if policy == "Orphan":
            self._orphan(uid)
        delay = self._deletion_delays.get(key.plural)
        foreground = policy == "Foreground"
        if delay is None and not foreground:
            return self._remove(key)
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = _now()
        new["metadata"]["finalizers"] = (new["metadata"].get("finalizers", []) + ["foregroundDeletion"] * foreground
                                         + ["emulator.test/deletion-delay"] * (delay is not None))
        marked = self._modify(key, new)
        hooks = list(self._hooks["delete"][key.plural])
        began = time.monotonic()

        def finish() -> None:
            for callback in hooks:
                callback(copy.deepcopy(marked))
            if foreground:
                time.sleep(self._gc_delay_s)  # the garbage collector notices the owner being deleted
                with self._lock:
                    for dependent in self._dependents(uid):
                        self._begin_deletion(dependent, "Background")
                    while any(self._blocks(dependent, uid) for dependent in self._dependents(uid)) and not self._stopping:
                        self._lock.wait(0.2)
            with self._lock:  # the finalizer's time, cut short when the emulator stops
                while not self._stopping and time.monotonic() - began < (delay or 0.0):
                    self._lock.wait((delay or 0.0) - (time.monotonic() - began))
                current = self._objects.get(key)
                if current is not None and current["metadata"]["uid"] == uid:
                    self._remove(key, hooks=False)

        self._spawn(finish)
        return marked

    # ---- garbage collection (callers hold self._lock) ----

    def _dependents(self, owner_uid: str) -> list[_Key]:
        return [key for key, obj in self._objects.items()
                if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])]

    def _blocks(self, key: _Key, owner_uid: str) -> bool:
        return any(ref.get("uid") == owner_uid and ref.get("blockOwnerDeletion")
                   for ref in self._objects[key]["metadata"].get("ownerReferences") or [])

    def _owners_gone(self, obj: dict) -> bool:
        refs = obj["metadata"].get("ownerReferences") or []
        uids = {o["metadata"]["uid"] for o in self._objects.values()}
        return bool(refs) and not any(ref.get("uid") in uids for ref in refs)

    def _orphan(self, owner_uid: str) -> None:
        for key in self._dependents(owner_uid):
            new = copy.deepcopy(self._objects[key])
            new["metadata"]["ownerReferences"] = [ref for ref in new["metadata"]["ownerReferences"]
                                                  if ref.get("uid") != owner_uid]
            self._modify(key, new)

    def _collect_later(self) -> None:
        """As the garbage collector, a moment later: delete (Background) every object all of whose
        owners are gone, whether they were deleted or never existed (a dangling reference)."""

        def collect() -> None:
            time.sleep(self._gc_delay_s)
            with self._lock:
                for key, obj in list(self._objects.items()):
                    if self._owners_gone(obj) and not obj["metadata"].get("deletionTimestamp"):
                        self.collected.append(f"{key.plural}/{key.name}")
                        self._begin_deletion(key, "Background")

        self._spawn(collect)

    def _run_hooks(self, kind: str, key: _Key, obj: dict) -> None:
        for callback in self._hooks[kind][key.plural]:
            self._spawn(callback, copy.deepcopy(obj))

    def _spawn(self, target: Callable, *args) -> threading.Thread:
        """Start a thread that `stop()` will join."""
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._adopt(thread)
        thread.start()
        return thread

    def _adopt(self, thread: threading.Thread) -> None:
        """Have `stop()` join `thread`; daemon threads, so a forgotten `stop()` cannot hang the interpreter."""
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()} | {thread}

    # ---- request bookkeeping ----

    def _record(self, method: str, path: str, query: dict, body: object) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(method, path, query, body))

    def _check_token(self, authorization: str) -> None:
        with self._lock:
            if self._tokens is not None and authorization.removeprefix("Bearer ") not in self._tokens:
                raise _ApiError(401, "Unauthorized", "Unauthorized")

    def _check_faults(self, method: str, path: str) -> None:
        """Raise the first injected fault that matches, using up one of its `times`."""
        with self._lock:
            for fault in self._faults:
                if fault["method"] in ("*", method) and fault["path"].search(path):
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        self._faults.remove(fault)
                    raise fault["error"]

    def _answer_lost(self, method: str, path: str) -> tuple | None:
        """The rule whose (method, path, instead) loses the answer to this served request, used up."""
        with self._lock:
            for rule in self._lost_answers:
                if rule[0] == method and rule[1].search(path):
                    self._lost_answers.remove(rule)
                    return rule
        return None

    def _watch_drop(self, sent: int) -> str | None:
        """'abrupt' or 'graceful' when a watch that has sent `sent` events must be cut now, else None."""
        with self._lock:
            rule = self._drop_rule
            if rule is None or sent < rule["after"]:
                return None
            if rule["times"] is not None:
                rule["times"] -= 1
                if rule["times"] <= 0:
                    self._drop_rule = None
            return "abrupt" if rule["abrupt"] else "graceful"

    def _track(self, conn: socket.socket) -> None:
        """Register a connection and its handler thread, so that `stop()` can end and join them."""
        self._adopt(threading.current_thread())
        with self._lock:
            self._connections.add(conn)
            if self._stopping:
                _shutdown(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    # ---- the REST API ----

    def _serve(self, method: str, route: _Route, query: dict, body: object, content_type: str) -> tuple[int, dict]:
        """Answer a non-streaming resource request with (HTTP code, JSON body)."""
        if route.name is None and method == "GET":
            return 200, self._list(route, query)
        if route.name is None and method == "POST":
            if route.namespace in self._absent_namespaces:
                raise _ApiError(404, "NotFound", f'namespaces "{route.namespace}" not found')
            return 201, self._create(route, body)
        if route.name is not None and route.sub in (None, "status"):
            if method == "GET":
                with self._lock:
                    return 200, copy.deepcopy(self._existing(route))
            if method == "PUT":
                return 200, self._update(route, lambda old: _require_object(body))
            if method == "PATCH":
                return 200, self._update(route, lambda old: _apply_patch(old, body, content_type))
            if method == "DELETE":
                return 200, self._delete(route, query, body)
        raise _ApiError(405, "MethodNotAllowed", f"{method} is not supported on {route.resource()}")

    def _pod_log(self, route: _Route, query: dict) -> bytes:
        """GET pods/{name}/log as the API server answers it: 400 with its words when no container is
        named and the pod has several, for a container not started yet, and for `previous` when the
        container never restarted; then `tailLines` (the last lines), `limitBytes` (the first bytes)."""
        with self._lock:
            pod = copy.deepcopy(self._existing(route))
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container")
        if not container:
            if len(names) != 1:
                raise _ApiError(400, "BadRequest", f"a container name must be specified for pod {route.name}, "
                                                   f"choose one of: [{' '.join(names)}]")
            container = names[0]
        if container not in names:
            raise _ApiError(400, "BadRequest", f"container {container} is not valid for pod {route.name}")
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        status = next((s for s in statuses if s["name"] == container), {})
        previous = query.get("previous") in ("true", "1")
        if previous and not (status.get("lastState") or {}).get("terminated"):
            raise _ApiError(400, "BadRequest",
                            f'previous terminated container "{container}" in pod "{route.name}" not found')
        waiting = (status.get("state") or {}).get("waiting")
        if not previous and (waiting or not status.get("state")):
            reason = (waiting or {}).get("reason") or "ContainerCreating"
            raise _ApiError(400, "BadRequest",
                            f'container "{container}" in pod "{route.name}" is waiting to start: {reason}')
        with self._lock:
            read = self._pod_logs.get((route.namespace, route.name, container, previous))
        text = read() if read else ""
        if query.get("tailLines"):
            text = "".join(text.splitlines(keepends=True)[-int(query["tailLines"]):])
        data = text.encode()
        return data[:int(query["limitBytes"])] if query.get("limitBytes") else data

    def _existing(self, route: _Route) -> dict:
        obj = self._objects.get(route.key(route.name))
        if obj is None:
            raise _ApiError(404, "NotFound", f'{route.resource()} "{route.name}" not found')
        return obj

    def _list(self, route: _Route, query: dict) -> dict:
        matches = _matcher(route, query)
        with self._lock:
            items = [copy.deepcopy(obj) for key, obj in self._objects.items() if matches(key, obj)]
            rv = str(self._rv)
        kind = items[0].get("kind", "") + "List" if items and items[0].get("kind") else "List"
        api_version = f"{route.group}/{route.version}" if route.group else route.version
        return {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}

    def _create(self, route: _Route, body: object) -> dict:
        obj = copy.deepcopy(_require_object(body))
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise _ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
        problems = _invalid_metadata(route.plural, meta)
        check = self._schemas.get(route.plural)
        problems += check(obj) if check else []
        if problems:
            kind = obj.get("kind") or route.plural
            where = f"{kind}.{route.group}" if route.group else kind
            raise _ApiError(422, "Invalid", f'{where} "{meta["name"]}" is invalid: {", ".join(problems)}')
        obj.pop("status", None)
        with self._lock:
            key = route.key(meta["name"])
            if key in self._objects:
                raise _ApiError(409, "AlreadyExists", f'{route.resource()} "{key.name}" already exists')
            return self._insert(key, obj)

    def _update(self, route: _Route, make_new: Callable[[dict], dict]) -> dict:
        """Replace the object with `make_new(current)`, honouring the status subresource split."""
        with self._lock:
            old = self._existing(route)
            new = copy.deepcopy(make_new(copy.deepcopy(old)))
            expected = new.get("metadata", {}).get("resourceVersion")
            if expected and expected != old["metadata"]["resourceVersion"]:
                raise _ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {route.resource()} "{route.name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            if route.sub == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
            else:
                new["status"] = copy.deepcopy(old.get("status"))
            if new["status"] is None:
                del new["status"]
            return self._modify(route.key(route.name), new)

    def _delete(self, route: _Route, query: dict, body: object) -> dict:
        policy = (body if isinstance(body, dict) else {}).get("propagationPolicy") or query.get("propagationPolicy")
        with self._lock:
            self._existing(route)
            gone = self._begin_deletion(route.key(route.name), policy)
            self._deletions.append(
                Deletion(route.group, route.version, route.namespace, route.plural, route.name, policy)
            )
            return gone

    def _watch(self, route: _Route, query: dict, peer_closed: Callable[[], bool]) -> Iterator[dict]:
        """Validate a watch request and return its stream of events (see `_follow`)."""
        matches = _matcher(route, query)
        timeout = float(query.get("timeoutSeconds") or 0)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        since = query.get("resourceVersion")
        if since not in (None, "") and not since.isdigit():
            raise _ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}")
        with self._lock:
            if since in (None, "", "0"):  # like the real server: current state first, as ADDED events
                initial = [_Event(self._rv, "ADDED", key, obj) for key, obj in self._objects.items()]
                start = len(self._events)
            else:
                discarded = self._events[:-self._history or len(self._events)] if self._history is not None else []
                if discarded and discarded[-1].rv > int(since):  # it would need an event no longer kept
                    self.expired_watches.append(since)
                    return iter([{"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Expired",
                        "message": f"too old resource version: {since} ({discarded[-1].rv})", "code": 410}}])
                initial = []
                start = next((i for i, e in enumerate(self._events) if e.rv > int(since)), len(self._events))
        return self._follow(initial, start, matches, deadline, peer_closed)

    def _follow(self, initial, index, matches, deadline, peer_closed) -> Iterator[dict]:
        """Yield matching events from `initial`, then from the log at `index` on, until timeout, stop or hang-up."""
        pending = initial
        while True:
            for event in pending:
                if matches(event.key, event.obj):
                    yield {"type": event.type, "object": event.obj}
            with self._lock:
                while index == len(self._events):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if self._stopping or (remaining is not None and remaining <= 0) or peer_closed():
                        return
                    self._lock.wait(0.2 if remaining is None else min(remaining, 0.2))
                pending, index = self._events[index:], len(self._events)

    def _port_target(self, ns: str, pod: str, port: int) -> tuple[str, int] | None:
        with self._lock:
            if _Key("", "v1", "pods", ns, pod) not in self._objects:
                raise _ApiError(404, "NotFound", f'pods "{pod}" not found')
            return self._pod_targets.get((ns, pod, port))

    def _discovery(self, path: str) -> dict:
        """`/version`, `/api` and `/apis` (the client asks with a trailing slash)."""
        path = path.rstrip("/")
        if path == "/version":
            return {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-emulator",
                "gitCommit": "",
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.22",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            with self._lock:
                served = {(k.group, k.version) for k in self._objects if k.group} | {(OME_GROUP, OME_VERSION)}
            groups = []
            for group, version in sorted(served):
                gv = {"groupVersion": f"{group}/{version}", "version": version}
                groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        raise _ApiError(404, "NotFound", "the server could not find the requested resource")


class _Handler(BaseHTTPRequestHandler):
    """HTTP glue: parses requests, records them, and streams watches and port-forwards."""

    protocol_version = "HTTP/1.1"  # keep-alive for the client's pool, chunked encoding for watches
    disable_nagle_algorithm = True

    @property
    def emulator(self) -> KubeEmulator:
        return self.server.emulator

    def setup(self) -> None:
        super().setup()
        self.emulator._track(self.connection)

    def finish(self) -> None:
        self.emulator._untrack(self.connection)
        super().finish()

    def log_message(self, format, *args) -> None:
        """Quiet: the request log is in `KubeEmulator.requests`."""

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.emulator._record(self.command, url.path, query, body)
        try:
            self.emulator._check_token(self.headers.get("Authorization", ""))
            self.emulator._check_faults(self.command, url.path)
            if self.emulator._stalled(self.command, url.path):
                self.close_connection = True
                return
            route = _parse_route(url.path)
            if route is None:
                self._send_json(200, self.emulator._discovery(url.path))
            elif route.sub == "portforward" and self.headers.get("Upgrade", "").lower() == "websocket":
                self._port_forward(route, query)
            elif self.command == "GET" and route.name is None and query.get("watch") in ("true", "1"):
                self._stream_watch(route, query)
            elif self.command == "GET" and route.plural == "pods" and route.sub == "log":
                self._send(200, self.emulator._pod_log(route, query), "text/plain")
            else:
                if isinstance(body, str):
                    raise _ApiError(400, "BadRequest", "the request body is not valid JSON")
                content_type = self.headers.get("Content-Type", "")
                answer = self.emulator._serve(self.command, route, query, body, content_type)
                lost = self.emulator._answer_lost(self.command, url.path)
                if lost and lost[2] is None:
                    self.close_connection = True
                    _shutdown(self.connection)
                    return
                if lost:
                    raise _ApiError(lost[2], "InternalError", "etcdserver: request timed out")
                self._send_json(*answer)
        except _ApiError as error:
            self._send_json(error.code, error.status())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _send_json(self, code: int, payload: dict) -> None:
        self._send(code, json.dumps(payload).encode(), "application/json")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream_watch(self, route: _Route, query: dict) -> None:
        """Send watch events as newline-delimited JSON, one per HTTP chunk."""
        events = self.emulator._watch(route, query, lambda: _peer_closed(self.connection))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for sent, event in enumerate(events, start=1):
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                drop = self.emulator._watch_drop(sent)
                if drop == "abrupt":
                    self.close_connection = True
                    _shutdown(self.connection)
                    return
                if drop == "graceful":
                    break
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            self.close_connection = True

    def _port_forward(self, route: _Route, query: dict) -> None:
        """Upgrade to a WebSocket and relay each requested port to the TCP target registered for it.

        Protocol `v4.channel.k8s.io` as the official client reads it: port i owns data channel 2i
        and error channel 2i+1; each channel first carries the port number (2 bytes, little
        endian); every frame payload starts with its channel byte.
        """
        ports = [p.strip() for p in query.get("ports", "").split(",") if p.strip()]
        if not ports or not all(p.isdigit() for p in ports):
            raise _ApiError(400, "BadRequest", "the ports query parameter must list port numbers")
        ports = [int(p) for p in ports]
        targets = [self.emulator._port_target(route.namespace, route.name, port) for port in ports]
        with self.emulator._lock:
            stall = self.emulator._stalled_forwards > 0
            self.emulator._stalled_forwards -= stall
            while stall and not self.emulator._stopping:
                self.emulator._lock.wait()
        if stall:
            return
        self._accept_websocket()
        self.close_connection = True
        ws = _WebSocket(self.connection, self.rfile)
        for index, port in enumerate(ports):
            ws.send(bytes([2 * index]) + struct.pack("<H", port))
            ws.send(bytes([2 * index + 1]) + struct.pack("<H", port))
        upstreams = [self._connect(ws, index, port, target) for index, (port, target) in enumerate(zip(ports, targets))]
        pumps = [
            self.emulator._spawn(_pump, upstream, ws, index, upstreams)
            for index, upstream in enumerate(upstreams)
            if upstream is not None
        ]
        if not pumps:
            ws.close()
        try:
            for channel, data in ws.messages():
                if channel % 2 == 0 and channel // 2 < len(upstreams) and upstreams[channel // 2] is not None:
                    _send_quietly(upstreams[channel // 2], data)
        except OSError:  # the client hung up
            pass
        finally:
            for upstream in upstreams:
                if upstream is not None:
                    _shutdown(upstream)
            for pump in pumps:
                pump.join(_STOP_JOIN_SECONDS)
            for upstream in upstreams:
                if upstream is not None:
                    upstream.close()

    def _accept_websocket(self) -> None:
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        digest = hashlib.sha1(self.headers["Sec-WebSocket-Key"].encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(digest.digest()).decode())
        if "v4.channel.k8s.io" in offered:  # v5 adds a close signal the client's PortForward cannot parse
            self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()

    def _connect(self, ws: "_WebSocket", index: int, port: int, target) -> socket.socket | None:
        """Connect to the port's target, or report on its error channel why not (as the kubelet does)."""
        try:
            if target is None:
                raise OSError("no target registered with set_pod_target")
            return socket.create_connection(target, timeout=_STOP_JOIN_SECONDS)
        except OSError as error:
            ws.send(bytes([2 * index + 1]) + f"error forwarding port {port}: {error}".encode())
            return None


def _pump(upstream: socket.socket, ws: "_WebSocket", index: int, upstreams: list) -> None:
    """Copy one target's bytes to its data channel; when the last target hangs up, close the WebSocket.

    v4 has no per-port close signal, so like the kubelet we end the whole connection.
    """
    upstream.settimeout(None)
    try:
        while data := upstream.recv(65536):
            ws.send(bytes([2 * index]) + data)
    except OSError:
        pass
    if ws.port_finished(len([u for u in upstreams if u is not None])):
        ws.close()


def _send_quietly(upstream: socket.socket, data: bytes) -> None:
    """Forward to a target; one target having hung up must not end the other ports' relays."""
    try:
        upstream.sendall(data)
    except OSError:
        pass


class _WebSocket:
    """The server side of RFC 6455 framing: frames from the client are masked, ours are not."""

    def __init__(self, conn: socket.socket, rfile) -> None:
        self._conn, self._rfile = conn, rfile
        self._send_lock = threading.Lock()
        self._finished_ports = 0
        self._closed = False

    def send(self, payload: bytes, opcode: int = 0x2) -> None:
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
        with self._send_lock:
            if not self._closed:
                self._conn.sendall(header + payload)

    def close(self) -> None:
        """Send a normal-closure frame once; the client answers with its own close."""
        try:
            self.send(struct.pack("!H", 1000), opcode=0x8)
        except OSError:
            pass
        with self._send_lock:
            self._closed = True

    def port_finished(self, total: int) -> bool:
        with self._send_lock:
            self._finished_ports += 1
            return self._finished_ports == total

    def messages(self) -> Iterator[tuple[int, bytes]]:
        """Yield (channel, data) for each data message until the client closes or hangs up."""
        message = b""
        while (frame := self._read_frame()) is not None:
            fin, opcode, payload = frame
            if opcode == 0x8:
                self.close()
                return
            if opcode == 0x9:
                self.send(payload, opcode=0xA)
            elif opcode in (0x0, 0x1, 0x2):
                message += payload
                if fin and message:
                    yield message[0], message[1:]
                    message = b""

    def _read_frame(self) -> tuple[bool, int, bytes] | None:
        head = self._rfile.read(2)
        if len(head) < 2:
            return None
        fin, opcode, masked, size = head[0] & 0x80, head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._rfile.read(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._rfile.read(8))[0]
        mask = self._rfile.read(4) if masked else b""
        payload = self._rfile.read(size)
        if len(payload) < size:
            return None
        if masked:
            key = (mask * (size // 4 + 1))[:size]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        return bool(fin), opcode, payload


# ---- pure helpers ----


def _parse_route(path: str) -> _Route | None:
    """Split `/api/v1/...` or `/apis/{group}/{version}/...` into a route; None for other paths."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 3:
        return None
    plural, name, sub = rest + [None] * (3 - len(rest))
    return _Route(group, version, namespace, plural, name, sub)


def _matcher(route: _Route, query: dict) -> Callable[[_Key, dict], bool]:
    """A predicate for the objects a list or watch of `route` returns; 400 for a bad selector."""
    try:
        labels_ok = _label_selector(query.get("labelSelector", ""))
        fields_ok = _field_selector(query.get("fieldSelector", ""))
    except ValueError as error:
        raise _ApiError(400, "BadRequest", str(error)) from None

    def matches(key: _Key, obj: dict) -> bool:
        return (
            (key.group, key.version, key.plural) == (route.group, route.version, route.plural)
            and (route.namespace is None or key.namespace == route.namespace)
            and labels_ok(obj.get("metadata", {}).get("labels") or {})
            and fields_ok(obj)
        )

    return matches


_LABEL_REQUIREMENT = re.compile(
    r"\s*(?:!\s*(?P<absent>[\w./-]+)"
    r"|(?P<key>[\w./-]+)(?:\s*(?P<op>==|=|!=)\s*(?P<value>[\w./-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*(?:,|$)"
)


def _label_selector(text: str) -> Callable[[dict], bool]:
    """Parse `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated (AND)."""
    tests, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = _LABEL_REQUIREMENT.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"unable to parse requirement in label selector {text!r}")
        tests.append(_label_test(match))
        pos = match.end()
    return lambda labels: all(test(labels) for test in tests)


def _label_test(match: re.Match) -> Callable[[dict], bool]:
    if match["absent"]:
        return lambda labels, k=match["absent"]: k not in labels
    key, op, value = match["key"], match["op"], match["value"]
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    if match["setop"]:
        values = {v.strip() for v in match["values"].split(",")}
        if match["setop"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels


def _field_selector(text: str) -> Callable[[dict], bool]:
    """Parse `path=value`, `path==value`, `path!=value` on dotted paths (e.g. `metadata.name`)."""
    tests = []
    for requirement in filter(None, (r.strip() for r in text.split(","))):
        match = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", requirement)
        if not match:
            raise ValueError(f"invalid field selector {requirement!r}")
        path, op, value = match.groups()
        equal = op != "!="
        tests.append(lambda obj, p=path, v=value, eq=equal: (str(_dig(obj, p)) == v) == eq)
    return lambda obj: all(test(obj) for test in tests)


def _dig(obj: dict, dotted: str) -> object:
    for part in dotted.split("."):
        obj = obj.get(part, "") if isinstance(obj, dict) else ""
    return obj


def _apply_patch(old: dict, patch: object, content_type: str) -> dict:
    """Apply a JSON patch (list of operations) or a merge patch; strategic merge and apply are treated as merge."""
    try:
        if content_type.startswith("application/json-patch+json"):
            return _json_patch(old, patch)
        return _merge_patch(old, _require_object(patch))
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise _ApiError(422, "Invalid", f"the patch cannot be applied: {error}") from None


def _merge_patch(target: object, patch: object) -> object:
    """RFC 7386: objects merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _json_patch(doc: dict, operations: list) -> dict:
    """RFC 6902 `add`, `replace`, `remove` and `test`; enough for the patches clients send to CRs."""
    doc = copy.deepcopy(doc)
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parents:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        if isinstance(parent, list):
            last = len(parent) if last == "-" else int(last)
        if op["op"] == "test":
            if parent[last] != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        elif op["op"] == "add" and isinstance(parent, list):
            parent.insert(last, op["value"])
        elif op["op"] in ("add", "replace"):
            parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[last]
        else:
            raise ValueError(f"unsupported JSON patch operation {op['op']!r}")
    return doc


def _require_object(body: object) -> dict:
    if not isinstance(body, dict):
        raise _ApiError(400, "BadRequest", "the request body must be a JSON object")
    return body


def _spec(obj: dict) -> dict:
    """Everything that bumps `metadata.generation` when it changes."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _complete_pod(pod: dict) -> dict:
    """Add the fields the API server and kubelet always set and the typed models require."""
    pod = copy.deepcopy(pod)
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    containers = pod.setdefault("spec", {}).setdefault("containers", [{"name": "main", "image": "emulated"}])
    statuses = pod.get("status", {}).get("containerStatuses", [])
    for index, status in enumerate(statuses):
        spec = containers[index] if index < len(containers) else {}
        status.setdefault("name", spec.get("name", f"container-{index}"))
        status.setdefault("image", spec.get("image", "emulated"))
        for field, default in (("imageID", ""), ("ready", False), ("restartCount", 0)):
            status.setdefault(field, default)
        for state in (status.get("state"), status.get("lastState")):
            if state and "terminated" in state:
                reason = state["terminated"].get("reason")
                state["terminated"].setdefault("exitCode", 137 if reason == "OOMKilled" else 1)
    return pod


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _peer_closed(conn: socket.socket) -> bool:
    """True when the client hung up (readable with nothing to read) on a connection it is not writing to."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
