"""The Kubernetes API emulator speaks the protocol the official `kubernetes` client expects.

Every test goes through the real client (REST, watch, port-forward, kubeconfig loading), so the
cluster code tested against the emulator uses the same calls it makes against a real cluster.
"""

import contextlib
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward

from tests.conftest import until
from tests.k8s_emulator import OME_GROUP, OME_VERSION, KubeEmulator

NS = "tuning"
ISVC = "inferenceservices"
AT = (OME_GROUP, OME_VERSION, NS, ISVC)  # where the client finds InferenceServices: group, version, ns, plural
WAIT = 10  # seconds: the bound on every wait; a healthy run never gets near it


@pytest.fixture(autouse=True)
def bypass_proxies_for_localhost(monkeypatch):
    """Port-forward (websocket-client) and kubeconfig loading take HTTP_PROXY from the environment."""
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(variable, "127.0.0.1")


@pytest.fixture
def emulator():
    with KubeEmulator() as emu:
        yield emu


@pytest.fixture
def api_client(emulator):
    api = emulator.api_client()
    yield api
    api.close()


@pytest.fixture
def custom(api_client):
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def core(api_client):
    return client.CoreV1Api(api_client)


def isvc(name, **labels):
    return {
        "apiVersion": f"{OME_GROUP}/{OME_VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": labels},
        "spec": {"model": {"name": "smollm2"}, "engine": {"minReplicas": 1}},
    }


def create(custom, body):
    return custom.create_namespaced_custom_object(*AT, body)


def names(listing):
    return sorted(item["metadata"]["name"] for item in listing["items"])


def test_inference_service_create_get_list_patch_delete(custom, emulator):
    created = create(custom, isvc("a", app="tuner", trial="1"))
    create(custom, isvc("b", app="tuner", trial="2"))
    create(custom, isvc("c", app="other"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1 and meta["namespace"] == NS
    assert custom.get_namespaced_custom_object(*AT, "a")["spec"]["model"]["name"] == "smollm2"

    def listed(**selectors):
        return names(custom.list_namespaced_custom_object(*AT, **selectors))

    assert listed() == ["a", "b", "c"]
    assert listed(label_selector="app=tuner") == ["a", "b"]
    assert listed(label_selector="app=tuner,trial!=1") == ["b"]
    assert listed(label_selector="trial") == ["a", "b"]
    assert listed(label_selector="!trial") == ["c"]
    assert listed(label_selector="trial in (2,3)") == ["b"]
    assert listed(field_selector="metadata.name=c") == ["c"]
    listing = custom.list_namespaced_custom_object(*AT)
    assert int(listing["metadata"]["resourceVersion"]) >= 3

    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}], "url": "http://a"}}
    patched = custom.patch_namespaced_custom_object_status(*AT, "a", ready)
    assert patched["status"]["conditions"][0]["status"] == "True"
    assert patched["metadata"]["generation"] == 1  # status does not bump the generation
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert custom.get_namespaced_custom_object_status(*AT, "a")["status"]["url"] == "http://a"

    spec_patch = {"spec": {"engine": {"minReplicas": 2}}, "status": {"url": "ignored"}}
    patched = custom.patch_namespaced_custom_object(*AT, "a", spec_patch)
    assert patched["spec"]["engine"]["minReplicas"] == 2 and patched["spec"]["model"]["name"] == "smollm2"
    assert patched["status"]["url"] == "http://a"  # the main resource cannot change the status
    assert patched["metadata"]["generation"] == 2

    stale = dict(patched, metadata=dict(patched["metadata"], resourceVersion=meta["resourceVersion"]))
    with pytest.raises(ApiException) as conflict:
        custom.replace_namespaced_custom_object(*AT, "a", stale)
    assert conflict.value.status == 409
    patched["spec"]["engine"]["minReplicas"] = 3
    replaced = custom.replace_namespaced_custom_object(*AT, "a", patched)
    assert replaced["spec"]["engine"]["minReplicas"] == 3 and replaced["metadata"]["generation"] == 3

    marked = custom.delete_namespaced_custom_object(
        *AT, "a", body=client.V1DeleteOptions(propagation_policy="Foreground")
    )
    # Foreground goes through the garbage collector: marked first, removed a moment later.
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["finalizers"] == ["foregroundDeletion"]
    custom.delete_namespaced_custom_object(*AT, "b", propagation_policy="Background")
    assert [(d.name, d.propagation_policy) for d in emulator.deletions] == [("a", "Foreground"), ("b", "Background")]
    deletes = [r for r in emulator.requests if r.method == "DELETE"]
    assert deletes[0].body["propagationPolicy"] == "Foreground" and deletes[0].path.endswith(f"/{NS}/{ISVC}/a")
    assert [o["metadata"]["name"] for o in emulator.objects(ISVC, NS)] == ["a", "c"]  # b at once
    assert until(lambda: [o["metadata"]["name"] for o in emulator.objects(ISVC, NS)] == ["c"], 5)
    with pytest.raises(ApiException) as missing:
        custom.get_namespaced_custom_object(*AT, "a")
    assert missing.value.status == 404
    with pytest.raises(ApiException) as missing:
        custom.delete_namespaced_custom_object(*AT, "a")
    assert missing.value.status == 404


def test_json_patch_is_applied(custom):
    create(custom, isvc("a"))
    ops = [
        {"op": "replace", "path": "/spec/engine/minReplicas", "value": 4},
        {"op": "add", "path": "/metadata/labels/x", "value": "y"},
    ]
    patched = custom.patch_namespaced_custom_object(*AT, "a", ops, _content_type="application/json-patch+json")
    assert patched["spec"]["engine"]["minReplicas"] == 4 and patched["metadata"]["labels"] == {"x": "y"}


def test_duplicate_create_is_a_409_already_exists(custom):
    create(custom, isvc("a"))
    with pytest.raises(ApiException) as duplicate:
        create(custom, isvc("a"))
    assert duplicate.value.status == 409
    assert '"reason": "AlreadyExists"' in duplicate.value.body


@pytest.mark.parametrize(
    "method, status, reason",
    [("POST", 403, "Forbidden"), ("POST", 404, "NotFound"), ("POST", 409, "AlreadyExists")],
)
def test_injected_faults_surface_as_api_exceptions_once(custom, emulator, method, status, reason):
    emulator.fail_next(method, rf"/apis/{OME_GROUP}/{OME_VERSION}/namespaces/{NS}/{ISVC}$", status, reason, "injected")
    with pytest.raises(ApiException) as injected:
        create(custom, isvc("a"))
    assert injected.value.status == status
    assert emulator.objects(ISVC) == []
    create(custom, isvc("a"))  # times=1: the next request goes through
    assert len(emulator.objects(ISVC)) == 1


def test_injected_fault_on_a_watch_raises_from_the_stream(custom, emulator):
    emulator.fail_next("GET", f"/{ISVC}$", 403)
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, *AT, timeout_seconds=1, _request_timeout=WAIT)
    with pytest.raises(ApiException) as forbidden:
        next(stream)
    assert forbidden.value.status == 403


def test_watch_sees_added_then_modified_by_a_controller_then_deleted(custom, emulator):
    since = custom.list_namespaced_custom_object(*AT)["metadata"]["resourceVersion"]
    emulator.on_create(ISVC, lambda obj: emulator.add_condition(*AT, obj["metadata"]["name"], "Ready", "True"))
    deleted = threading.Event()
    emulator.on_delete(ISVC, lambda obj: deleted.set())
    create(custom, isvc("other", app="unrelated"))
    create(custom, isvc("a", app="tuner"))

    seen = []
    w = watch.Watch()
    for event in w.stream(
        custom.list_namespaced_custom_object, *AT,
        label_selector="app=tuner", resource_version=since, timeout_seconds=WAIT, _request_timeout=WAIT,
    ):
        obj = event["object"]
        seen.append((event["type"], obj["metadata"]["name"]))
        conditions = obj.get("status", {}).get("conditions", [])
        being_deleted = bool(obj["metadata"].get("deletionTimestamp"))
        if event["type"] == "MODIFIED" and conditions[0]["status"] == "True" and not being_deleted:
            custom.delete_namespaced_custom_object(*AT, "a", propagation_policy="Foreground")
        if event["type"] == "DELETED":
            w.stop()
    # Ready, then marked for (foreground) deletion, then gone.
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert deleted.wait(WAIT)


def test_watch_without_resource_version_starts_with_the_current_objects(custom, emulator):
    create(custom, isvc("a"))
    emulator.set_status(*AT, "a", {"phase": "Running"})
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, *AT, timeout_seconds=1, _request_timeout=WAIT)
    events = list(stream)
    assert [(e["type"], e["object"]["status"]["phase"]) for e in events] == [("ADDED", "Running")]


@pytest.mark.parametrize("abrupt", [True, False])
def test_a_dropped_watch_ends_and_a_new_watch_resumes_from_the_last_resource_version(custom, emulator, abrupt):
    since = custom.list_namespaced_custom_object(*AT)["metadata"]["resourceVersion"]
    create(custom, isvc("a"))
    create(custom, isvc("b"))
    emulator.drop_watches_after(1, abrupt=abrupt)

    first = watch.Watch()
    seen = []
    stream = first.stream(
        custom.list_namespaced_custom_object, *AT,
        resource_version=since, timeout_seconds=WAIT, _request_timeout=WAIT,
    )
    if abrupt:
        with pytest.raises(urllib3.exceptions.ProtocolError):
            for event in stream:
                seen.append(event["object"]["metadata"]["name"])
    else:
        seen = [event["object"]["metadata"]["name"] for event in stream]
    assert seen == ["a"]

    create(custom, isvc("c"))
    resumed = watch.Watch().stream(
        custom.list_namespaced_custom_object, *AT,
        resource_version=first.resource_version, timeout_seconds=1, _request_timeout=WAIT,
    )
    assert [event["object"]["metadata"]["name"] for event in resumed] == ["b", "c"]


def test_a_watch_from_a_compacted_resource_version_gets_410_gone_on_http_200(custom, emulator):
    since = custom.list_namespaced_custom_object(*AT)["metadata"]["resourceVersion"]
    create(custom, isvc("a"))
    create(custom, isvc("b"))
    emulator.keep_history(1)  # "a"'s creation is gone from the history: a watch from `since` needs it
    # What the server sends: HTTP 200, one ERROR event holding a Status, then the end of the stream.
    url = f"{emulator.url}/apis/{OME_GROUP}/{OME_VERSION}/namespaces/{NS}/{ISVC}?watch=true&resourceVersion={since}"
    with urllib.request.urlopen(url, timeout=WAIT) as raw:
        assert raw.status == 200
        (line,) = [line for line in raw.read().decode().splitlines() if line]
    event = json.loads(line)
    assert event["type"] == "ERROR" and event["object"]["kind"] == "Status"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    assert event["object"]["message"].startswith(f"too old resource version: {since} (")
    # The official client raises it as an ApiException 410 (when the caller set a timeout).
    with pytest.raises(ApiException) as gone:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, *AT, resource_version=since,
                                  timeout_seconds=1, _request_timeout=WAIT))
    assert gone.value.status == 410
    # From a version whose later events are all kept, or with none (the current state): served.
    latest = custom.list_namespaced_custom_object(*AT)["metadata"]["resourceVersion"]
    create(custom, isvc("c"))
    resumed = watch.Watch().stream(custom.list_namespaced_custom_object, *AT, resource_version=latest,
                                   timeout_seconds=1, _request_timeout=WAIT)
    assert [e["object"]["metadata"]["name"] for e in resumed] == ["c"]
    assert emulator.expired_watches == [since, since]


def test_invalid_names_and_labels_are_refused_with_422_as_the_api_server_words_it(custom, core):
    with pytest.raises(ApiException) as bad_name:
        create(custom, isvc("Tuning_Run"))
    message = lambda caught: json.loads(caught.value.body)["message"]  # noqa: E731 - the Status the server sent
    assert bad_name.value.status == 422
    assert message(bad_name).startswith(
        'InferenceService.ome.io "Tuning_Run" is invalid: metadata.name: Invalid value: "Tuning_Run": a '
        "lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters")
    with pytest.raises(ApiException) as bad_label:
        create(custom, isvc("ok", **{"autotuner.io/experiment": "run_"}))  # a label value must end alphanumeric
    assert bad_label.value.status == 422 and 'metadata.labels: Invalid value: "run_"' in message(bad_label)
    with pytest.raises(ApiException) as long_service:
        core.create_namespaced_service(NS, {"metadata": {"name": "s" * 64}, "spec": {"ports": [{"port": 80}]}})
    assert long_service.value.status == 422 and "DNS-1035 label" in message(long_service)
    create(custom, isvc("a.b-c", **{"example.com/Key_1": "V.1"}))  # what the rules allow passes


def test_custom_resources_missing_a_required_field_or_of_a_wrong_type_are_refused_with_422(custom):
    job = {"apiVersion": f"{OME_GROUP}/{OME_VERSION}", "kind": "BenchmarkJob", "metadata": {"name": "j"},
           "spec": {"task": "text-to-text", "maxTimePerIteration": 1}}
    with pytest.raises(ApiException) as missing:
        custom.create_namespaced_custom_object(OME_GROUP, OME_VERSION, NS, "benchmarkjobs", job)
    assert missing.value.status == 422
    assert json.loads(missing.value.body)["message"] == (
        'BenchmarkJob.ome.io "j" is invalid: spec.endpoint: Required value, '
        "spec.maxRequestsPerIteration: Required value, spec.outputLocation: Required value")
    wrong = isvc("w")
    wrong["spec"]["engine"]["minReplicas"] = "one"
    with pytest.raises(ApiException) as invalid:
        create(custom, wrong)
    assert invalid.value.status == 422 and "spec.engine.minReplicas: Invalid value" in invalid.value.body


def test_the_clients_watch_reconnects_by_itself_after_a_clean_drop(custom, emulator):
    since = custom.list_namespaced_custom_object(*AT)["metadata"]["resourceVersion"]
    a = create(custom, isvc("a"))
    create(custom, isvc("b"))
    emulator.drop_watches_after(1, abrupt=False)
    w = watch.Watch()
    seen = []
    # No timeout_seconds: the client retries from its last resourceVersion (the read timeout bounds a hang).
    for event in w.stream(custom.list_namespaced_custom_object, *AT, resource_version=since, _request_timeout=WAIT):
        seen.append(event["object"]["metadata"]["name"])
        if len(seen) == 2:
            w.stop()
    assert seen == ["a", "b"]
    watches = [r.query for r in emulator.requests if r.query.get("watch") == "true"]
    assert [q["resourceVersion"] for q in watches] == [since, a["metadata"]["resourceVersion"]]


def test_cluster_scoped_custom_objects(custom):
    runtimes = (OME_GROUP, OME_VERSION, "clusterservingruntimes")
    body = {"apiVersion": f"{OME_GROUP}/{OME_VERSION}", "kind": "ClusterServingRuntime", "metadata": {"name": "llama"}}
    custom.create_cluster_custom_object(*runtimes, body)
    assert "namespace" not in custom.get_cluster_custom_object(*runtimes, "llama")["metadata"]
    assert names(custom.list_cluster_custom_object(*runtimes)) == ["llama"]
    custom.delete_cluster_custom_object(*runtimes, "llama")
    assert names(custom.list_cluster_custom_object(*runtimes)) == []


def pod(name, app, **status):
    return {"metadata": {"name": name, "labels": {"app": app}}, "status": status}


def waiting(reason):
    return {"state": {"waiting": {"reason": reason}}}


def test_pods_listed_by_label_show_injected_failures(core, emulator):
    emulator.put_pod(NS, pod("crash", "isvc-a", containerStatuses=[waiting("CrashLoopBackOff")]))
    emulator.put_pod(NS, pod("pull", "isvc-a", containerStatuses=[waiting("ImagePullBackOff")]))
    oom = {"state": {"running": {}}, "lastState": {"terminated": {"reason": "OOMKilled"}}, "restartCount": 3}
    emulator.put_pod(NS, pod("oom", "isvc-a", containerStatuses=[oom]))
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    emulator.put_pod(NS, pod("pending", "isvc-a", phase="Pending", conditions=[unschedulable]))
    emulator.put_pod(NS, pod("elsewhere", "isvc-b"))

    pods = {p.metadata.name: p for p in core.list_namespaced_pod(NS, label_selector="app=isvc-a").items}
    assert sorted(pods) == ["crash", "oom", "pending", "pull"]
    assert pods["crash"].status.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"
    assert pods["pull"].status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"
    assert pods["oom"].status.container_statuses[0].last_state.terminated.reason == "OOMKilled"
    assert pods["pending"].status.conditions[0].reason == "Unschedulable"
    assert core.read_namespaced_pod("crash", NS).metadata.labels == {"app": "isvc-a"}


def test_pod_watch_sees_a_pod_turn_into_crash_loop_and_go(core, emulator):
    emulator.put_pod(NS, pod("p", "x", phase="Running"))
    w = watch.Watch()
    seen = []
    pods = w.stream(core.list_namespaced_pod, NS, label_selector="app=x", timeout_seconds=WAIT, _request_timeout=WAIT)
    for event in pods:
        statuses = event["object"].status.container_statuses or []
        seen.append((event["type"], statuses[0].state.waiting.reason if statuses else None))
        if event["type"] == "ADDED":
            emulator.put_pod(NS, pod("p", "x", containerStatuses=[waiting("CrashLoopBackOff")]))
        elif event["type"] == "MODIFIED":
            emulator.delete_pod(NS, "p")
        else:
            w.stop()
    assert seen == [("ADDED", None), ("MODIFIED", "CrashLoopBackOff"), ("DELETED", "CrashLoopBackOff")]


def test_a_pods_log_is_served_only_while_the_kubelet_would_have_one(core, emulator):
    """As the API server answers GET pods/{name}/log: 400 in its words for a container not started
    yet and for `previous` before any restart, the last lines (tailLines) or the first bytes
    (limitBytes), and 404 once the pod is gone."""
    def log_of(**query):
        try:
            return core.read_namespaced_pod_log("engine", NS, **query)
        except ApiException as error:
            return error.status, json.loads(error.body)["message"]

    emulator.put_pod(NS, pod("engine", "x", containerStatuses=[waiting("ContainerCreating")]))
    emulator.set_pod_log(NS, "engine", "main", lambda: "one\ntwo\nthree\n")
    emulator.set_pod_log(NS, "engine", "main", lambda: "before\nTraceback\n", previous=True)
    assert log_of() == (400, 'container "main" in pod "engine" is waiting to start: ContainerCreating')
    running = {"state": {"running": {}}}
    emulator.put_pod(NS, pod("engine", "x", containerStatuses=[running]))
    assert log_of(container="main") == "one\ntwo\nthree\n"
    assert log_of(tail_lines=2) == "two\nthree\n" and log_of(limit_bytes=5) == "one\nt"
    assert log_of(previous=True) == (400, 'previous terminated container "main" in pod "engine" not found')
    assert log_of(container="sidecar") == (400, "container sidecar is not valid for pod engine")
    emulator.put_pod(NS, pod("engine", "x", containerStatuses=[
        {**waiting("CrashLoopBackOff"), "lastState": {"terminated": {"reason": "Error"}}, "restartCount": 1}]))
    assert log_of(previous=True) == "before\nTraceback\n"
    emulator.delete_pod(NS, "engine")
    assert log_of() == (404, 'pods "engine" not found')


def test_events_list_is_empty_until_a_test_adds_one(core, emulator):
    assert core.list_namespaced_event(NS).items == []
    emulator.put_event(NS, {"metadata": {"name": "e1"}, "reason": "FailedScheduling", "message": "0/1 nodes available"})
    assert [e.reason for e in core.list_namespaced_event(NS).items] == ["FailedScheduling"]


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def local_http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()
    thread.join(WAIT)


@contextlib.contextmanager
def forwarded(core, pod, port):
    pf = portforward(core.connect_get_namespaced_pod_portforward, pod, NS, ports=str(port))
    try:
        yield pf
    finally:
        pf.close()
        pf.websocket.shutdown()  # websocket-client leaves its socket open when the server closes first


def read_to_end(sock):
    sock.settimeout(WAIT)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_port_forward_relays_an_http_request_to_a_local_server(core, emulator, local_http_server):
    emulator.put_pod(NS, {"metadata": {"name": "engine-0"}})
    emulator.set_pod_target(NS, "engine-0", 8080, local_http_server)
    with forwarded(core, "engine-0", 8080) as pf:
        sock = pf.socket(8080)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: engine-0\r\nConnection: close\r\n\r\n")
        response = read_to_end(sock)
    assert response.startswith(b"HTTP/1.0 200 OK") and response.endswith(b"hello from /metrics")
    assert pf.error(8080) is None


def test_port_forward_reports_an_unreachable_port_on_its_error_channel(core, emulator):
    emulator.put_pod(NS, {"metadata": {"name": "engine-0"}})
    with forwarded(core, "engine-0", 9090) as pf:
        assert read_to_end(pf.socket(9090)) == b""
    assert "error forwarding port 9090" in pf.error(9090)


def test_port_forward_to_a_missing_pod_fails(core):
    with pytest.raises(ApiException, match="404"):
        portforward(core.connect_get_namespaced_pod_portforward, "nope", NS, ports="8080")


@pytest.fixture
def restore_default_client_configuration():
    """load_kube_config() changes the process-wide default; put it back for the other tests."""
    saved = client.Configuration.get_default_copy()
    yield
    client.Configuration.set_default(saved)


def test_kubeconfig_points_the_default_client_at_the_emulator(emulator, tmp_path, restore_default_client_configuration):
    path = emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    config.load_kube_config(config_file=str(path))
    with client.ApiClient() as api:
        assert client.Configuration.get_default_copy().host == emulator.url
        created = client.CustomObjectsApi(api).create_namespaced_custom_object(*AT, isvc("a"))
        assert created["metadata"]["name"] == "a"
        assert client.VersionApi(api).get_code().git_version.startswith("v1.")
    _, active = config.list_kube_config_contexts(config_file=str(path))
    assert active["context"]["namespace"] == NS


def test_discovery_endpoints(api_client):
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    assert OME_GROUP in [group.name for group in client.ApisApi(api_client).get_api_versions().groups]
    assert client.VersionApi(api_client).get_code().major == "1"


def emulator_threads():
    return [t for t in threading.enumerate() if "kube-emulator" in t.name or "process_request_thread" in t.name]


def test_stop_ends_open_watches_and_keep_alive_connections():
    emu = KubeEmulator().start()
    api = emu.api_client()
    try:
        custom = client.CustomObjectsApi(api)
        events = watch.Watch().stream(custom.list_namespaced_custom_object, *AT, _request_timeout=WAIT)
        custom.create_namespaced_custom_object(*AT, isvc("a"))  # a pooled keep-alive connection
        assert next(events)["type"] == "ADDED"  # the watch is open on a second connection
        assert emulator_threads()
        emu.stop()
        assert emulator_threads() == []
    finally:
        api.close()
        emu.stop()


def owned_by(owner, block=False):
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid,
            **({"blockOwnerDeletion": True} if block else {})}


def configmap(core, name, owners=()):
    body = {"metadata": {"name": name, "ownerReferences": list(owners)}}
    return core.create_namespaced_config_map(NS, body)


def configmaps(core):
    return sorted(c.metadata.name for c in core.list_namespaced_config_map(NS).items)


def test_the_garbage_collector_deletes_dependents_of_a_deleted_owner_unless_orphaned(core, emulator):
    owner = configmap(core, "owner")
    configmap(core, "dependent", [owned_by(owner)])
    core.delete_namespaced_config_map("owner", NS, propagation_policy="Background")
    assert configmaps(core) == ["dependent"]  # the owner at once, its dependent a moment later
    assert until(lambda: configmaps(core) == [], 5) and emulator.collected == ["configmaps/dependent"]

    owner = configmap(core, "owner")
    configmap(core, "kept", [owned_by(owner)])
    core.delete_namespaced_config_map("owner", NS, propagation_policy="Orphan")
    time.sleep(1)
    (kept,) = core.list_namespaced_config_map(NS).items
    assert kept.metadata.name == "kept" and not kept.metadata.owner_references


def test_a_dependent_whose_owner_never_existed_is_collected(core, emulator):
    configmap(core, "dangling", [{"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "no-such-uid"}])
    assert until(lambda: configmaps(core) == [], 5)


def test_a_foreground_delete_waits_for_blocking_dependents_in_their_grace(core, emulator):
    emulator.set_deletion_delay("pods", 2.0)  # a pod's termination grace
    owner = configmap(core, "owner")
    pod = {"metadata": {"name": "p", "ownerReferences": [owned_by(owner, block=True)]},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}
    core.create_namespaced_pod(NS, pod)
    began = time.monotonic()
    core.delete_namespaced_config_map("owner", NS, propagation_policy="Foreground")
    marked = core.read_namespaced_config_map("owner", NS)
    assert marked.metadata.deletion_timestamp and marked.metadata.finalizers == ["foregroundDeletion"]
    assert until(lambda: core.list_namespaced_pod(NS).items[0].metadata.deletion_timestamp is not None, 5)
    assert configmaps(core) == ["owner"]  # still there while its pod terminates
    assert until(lambda: configmaps(core) == [], 10)
    assert time.monotonic() - began >= 2.0 and core.list_namespaced_pod(NS).items == []
