"""The OME backend end to end against the HTTP-level Kubernetes API emulator (official client)."""

import contextlib
import json
import time
import urllib.request

import pytest
from kubernetes import client, watch

from llm_autotuner.cluster.cleanup import delete_labelled
from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import LLAMA_CPP, SGLANG
from llm_autotuner.cluster.kube import labels, resource_name
from llm_autotuner.cluster.lease import RunLease
from llm_autotuner.cluster import ome
from llm_autotuner.cluster.ome import OmeBackend, OmeDeployer
from tests.conftest import until
from tests.fake_ome import GROUP, PLURAL, VERSION, FakeOme
from tests.k8s_emulator import KubeEmulator
from llm_autotuner.errors import DeploymentError
from llm_autotuner.task import OmeDeployment

NS = "tuning"


@pytest.fixture
def emulator():
    with KubeEmulator() as running:
        with RunLease(settings(), "ome-test", "run1", api=running.api_client()):  # the run the trials belong to
            yield running


def settings(**overrides) -> OmeDeployment:
    return OmeDeployment(**({"backend": "ome", "namespace": NS, "model": "smollm2", "runtime": "srt-smollm2",
                            "gpu_budget": 4, "endpoint": "port-forward", "unschedulable_grace_s": 1.0}
                           | overrides))


def spec(tmp_path, flags, profile=LLAMA_CPP, trial="t0001") -> EngineSpec:
    return EngineSpec(experiment="ome-test", run_id="run1", trial_id=trial, profile=profile, executable="",
                      model_path="$(MODEL_PATH)", served_name="smollm2", flags=flags, workdir=tmp_path / trial)


@pytest.fixture
def controller(emulator, tmp_path, llama_server, smollm2):
    fake = FakeOme(emulator, llama_server, smollm2, tmp_path)
    yield fake
    fake.stop_all()


def test_create_ready_serve_delete(emulator, controller, tmp_path):
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    with deployer.deployed(spec(tmp_path, {"parallel": 2, "ctx-size": 1024}), ready_timeout_s=60) as endpoint:
        stored = emulator.objects(PLURAL, NS)
        assert [o["metadata"]["name"] for o in stored] == [resource_name("ome-test", "t0001", "run1")] == ["ome-test-run1-t0001"]
        assert stored[0]["metadata"]["labels"]["autotuner.io/trial"] == "t0001"
        assert stored[0]["spec"]["engine"]["runner"]["args"] == ["--parallel", "2", "--ctx-size", "1024"]
        # Through the port-forward to the real engine the fake controller started with those flags.
        with urllib.request.urlopen(endpoint.url + "/v1/models", timeout=10) as response:
            assert b"smollm2" in response.read()
        assert endpoint.cluster_url == f"http://{stored[0]['metadata']['name']}.{NS}.svc.cluster.local:8080"
        assert endpoint.via == "port-forward"
    assert emulator.objects(PLURAL, NS) == []
    assert [d.propagation_policy for d in emulator.deletions if d.plural == PLURAL] == ["Foreground"]
    assert controller.engines == {}
    assert (tmp_path / "t0001" / "inference_service.yaml").is_file()


def test_the_engine_pods_start_up_log_is_kept_in_the_trials_engine_log(emulator, controller, tmp_path):
    """The pods and their logs go with the InferenceService: what the engine logged at start (its
    own choices, pinned in the winner's launch line) is read at Ready into the trial's engine.log."""
    flags = {"parallel": 2, "ctx-size": 1024}
    with OmeDeployer(settings(), api=emulator.api_client()).deployed(spec(tmp_path, flags), ready_timeout_s=60):
        log = (tmp_path / "t0001" / "engine.log").read_text()
    assert log.startswith("==> pod ome-test-run1-t0001-engine-0, container ome-container <==\n")
    assert "llama threadpool init, n_threads = " in log  # the real llama-server's own start-up lines
    chosen = LLAMA_CPP.chosen_by_engine(log, flags)
    assert chosen.get("threads", 0) >= 1 and "parallel" not in chosen  # set by the trial: not the engine's choice


def _complete(url: str) -> None:
    body = json.dumps({"model": "smollm2", "prompt": "Hello", "max_tokens": 4}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def _log_reads(emulator) -> list[str]:
    return [r.path for r in emulator.requests if r.method == "GET" and r.path.endswith("/log")]


def test_what_the_engine_logs_while_benchmarked_is_kept_before_its_pods_go(emulator, controller, tmp_path):
    """At the teardown, before the delete takes the pods and their logs, the whole log replaces the
    start-up: engine.log then holds what the engine said while it served, as a local engine's does."""
    flags = {"parallel": 2, "ctx-size": 1024}
    with OmeDeployer(settings(), api=emulator.api_client()).deployed(spec(tmp_path, flags),
                                                                     ready_timeout_s=60) as endpoint:
        _complete(endpoint.url)
        at_ready = (tmp_path / "t0001" / "engine.log").read_text()
    log = (tmp_path / "t0001" / "engine.log").read_text()
    served = "| task 0 | stop processing"  # the real llama-server's line for the request it served
    assert served not in at_ready and served in log
    assert log.startswith("==> pod ome-test-run1-t0001-engine-0, container ome-container <==\n")
    assert log.count("==> pod") == 1  # the start-up is in the whole log, not kept twice
    assert LLAMA_CPP.chosen_by_engine(log, flags) == LLAMA_CPP.chosen_by_engine(at_ready, flags) != {}
    assert emulator.objects(PLURAL, NS) == [] and controller.engines == {}


def test_a_log_over_the_limit_keeps_its_start_up_and_its_end(emulator, controller, tmp_path, monkeypatch):
    """A long benchmark makes a long log: engine.log keeps its first part (the start-up, where the
    engine says what it chose) and its last lines (where a run that went wrong says so), and says
    where it was cut."""
    monkeypatch.setattr(ome.pod_logs, "LOG_LIMIT_BYTES", 1 << 20)
    monkeypatch.setattr(ome.pod_logs, "LOG_END_LINES", 100)
    with OmeDeployer(settings(), api=emulator.api_client()).deployed(spec(tmp_path, {"ctx-size": 1024}),
                                                                     ready_timeout_s=60):
        start_up = (tmp_path / "t0001" / "engine.log").read_text().split("\n", 1)[1]
        batches = "".join(f"Decode batch {n}, #running-req: 8, gen throughput (token/s): 91.5\n" for n in range(30000))
        emulator.set_pod_log(NS, "ome-test-run1-t0001-engine-0", "ome-container",
                             lambda: start_up + batches + "KV cache pool is full. Retract requests.\n")
        # With the teardown's time for logs up after the first part, the end is not waited for.
        core = client.CoreV1Api(emulator.api_client())
        pod = core.read_namespaced_pod("ome-test-run1-t0001-engine-0", NS)
        text, missing = ome.pod_logs.read(core, pod, "ome-container", deadline=time.monotonic())
        assert missing is None and text.endswith(
            "\n(cut here: the log is longer than 1 MiB; its first 1 MiB are kept; its end was not read: the "
            "teardown's time for reading logs was up)\n")
    log = (tmp_path / "t0001" / "engine.log").read_text()
    head, cut, end = log.partition("\n(cut here: the log is longer than 1 MiB; its first 1 MiB are above, its last "
                                   "100 lines below, which may repeat lines above)\n")
    assert cut and head.startswith("==> pod ome-test-run1-t0001-engine-0, container ome-container <==\n" + start_up)
    assert len(head.encode()) < (1 << 20) + 100
    assert end.splitlines() == batches.splitlines()[-99:] + ["KV cache pool is full. Retract requests."]
    assert emulator.objects(PLURAL, NS) == []


def test_a_stopping_run_deletes_at_once_without_reading_the_log(emulator, controller, tmp_path):
    """While the run is being stopped (its `interrupt` raises), the teardown reads nothing: the
    start-up kept at Ready stays, and the delete is not kept waiting."""
    stopping = []

    def interrupt():
        if stopping:
            raise RuntimeError("the run is being stopped")

    with OmeDeployer(settings(), api=emulator.api_client()).deployed(
            spec(tmp_path, {"ctx-size": 1024}), ready_timeout_s=60, interrupt=interrupt) as endpoint:
        _complete(endpoint.url)
        reads_at_ready = len(_log_reads(emulator))
        stopping.append(True)
    assert len(_log_reads(emulator)) == reads_at_ready == 1
    assert "| task 0 |" not in (tmp_path / "t0001" / "engine.log").read_text()
    assert emulator.objects(PLURAL, NS) == []


def test_a_log_the_api_does_not_give_at_the_teardown_keeps_the_start_up_and_says_why(emulator, controller,
                                                                                      tmp_path, monkeypatch):
    monkeypatch.setattr(ome.pod_logs, "READ_TIMEOUT_S", 1)
    with OmeDeployer(settings(), api=emulator.api_client()).deployed(spec(tmp_path, {"ctx-size": 1024}),
                                                                     ready_timeout_s=60):
        emulator.stall_next("GET", r"/pods/[^/]+/log$", times=10)
        began = time.monotonic()
    assert time.monotonic() - began < ome.END_LOG_S + 4 * 1 + 5  # one read's tries past the limit, at most
    log = (tmp_path / "t0001" / "engine.log").read_text()
    assert "llama threadpool init" in log  # the start-up stays
    assert log.endswith("(the log after the start-up was not read: no answer from the API (MaxRetryError))\n")
    assert emulator.objects(PLURAL, NS) == []  # deleted all the same


def test_an_engine_log_the_api_does_not_give_costs_the_trial_nothing(emulator, controller, tmp_path, monkeypatch):
    """A log read that gets no answer (the client asks 4 times) leaves a line saying so, and the
    trial goes on with its engine."""
    monkeypatch.setattr(ome.pod_logs, "READ_TIMEOUT_S", 1)
    emulator.stall_next("GET", r"/pods/[^/]+/log$", times=10)
    began = time.monotonic()
    with OmeDeployer(settings(), api=emulator.api_client()).deployed(spec(tmp_path, {"ctx-size": 1024}),
                                                                     ready_timeout_s=60) as endpoint:
        assert time.monotonic() - began < 30
        with urllib.request.urlopen(endpoint.url + "/health", timeout=10) as response:
            assert response.status == 200
        log = (tmp_path / "t0001" / "engine.log").read_text()
    assert "(no log: no answer from the API (MaxRetryError))" in log


def test_never_ready_times_out_and_is_deleted(emulator, tmp_path):
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    began = time.monotonic()
    with pytest.raises(DeploymentError, match="not Ready before the deadline"):
        with deployer.deployed(spec(tmp_path, {}), ready_timeout_s=2):
            pass
    assert time.monotonic() - began < 15
    assert emulator.objects(PLURAL, NS) == []


@pytest.mark.parametrize("scenario, expected", [
    ("crashloop", "CrashLoopBackOff (last exit: Error, code 1)"),
    ("oom", "OOMKilled (exit code 137)"),
    ("imagepull", "ImagePullBackOff Back-off pulling image sglang:nope"),
    ("unschedulable", "unschedulable for 1 s: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
])
def test_pod_failures_fail_fast_with_the_reason(emulator, tmp_path, scenario, expected):
    FakeOme(emulator, "unused", "unused", tmp_path, scenario=scenario)
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    began = time.monotonic()
    with pytest.raises(DeploymentError) as caught:
        with deployer.deployed(spec(tmp_path, {}), ready_timeout_s=120):
            pass
    assert expected in str(caught.value)
    assert time.monotonic() - began < 30  # not the 120 s deadline
    assert emulator.objects(PLURAL, NS) == []


@pytest.mark.parametrize("status, reason, expected", [
    (409, "AlreadyExists", "already exists in namespace tuning: a leftover of an earlier run? `autotuner cleanup"),
    (403, "Forbidden", "forbidden to create InferenceService"),
    (404, "NotFound", "is OME installed"),
])
def test_api_errors_say_what_to_do(emulator, tmp_path, status, reason, expected):
    emulator.fail_next("POST", "/inferenceservices", status, reason, times=2)  # a 409 is tried twice
    with pytest.raises(DeploymentError, match=expected.replace("?", r"\?")):
        OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, {}))


def test_a_dropped_watch_is_resumed(emulator, controller, tmp_path):
    emulator.drop_watches_after(1, times=3)  # cut each of the next three watches after one event
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    with deployer.deployed(spec(tmp_path, {"ctx-size": 1024}), ready_timeout_s=60):
        watches = [r for r in emulator.requests if r.method == "GET" and "watch" in str(r.query)]
        assert len(watches) >= 2


def test_a_watch_whose_resource_version_expired_lists_again(emulator, controller, tmp_path):
    # etcd keeps a window of history: a watch resumed from an older resourceVersion (here: any
    # event since it) gets 410 Gone, and the wait starts over from the current state.
    emulator.keep_history(0)
    emulator.drop_watches_after(1, times=1)  # the first watch is cut: it resumes from its resourceVersion
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    with deployer.deployed(spec(tmp_path, {"ctx-size": 1024}), ready_timeout_s=60):
        assert emulator.expired_watches  # refused at least once...
        watches = [r.query for r in emulator.requests if r.method == "GET" and str(r.query.get("watch")).lower() == "true"]
        refused = watches.index(next(q for q in watches if q.get("resourceVersion") == emulator.expired_watches[0]))
        assert any(not q.get("resourceVersion") for q in watches[refused + 1:])  # ...then watched from now


def test_any_task_name_makes_names_and_labels_the_api_server_accepts(emulator, tmp_path):
    # Task names may hold capitals, '_' and '.', and end with any of them; the emulator refuses
    # (422) what a real API server would.
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    with contextlib.ExitStack() as runs:
        for experiment in ("My_Task.v2_", "a" * 63, "9lives"):
            runs.enter_context(RunLease(settings(), experiment, "20261202-120000-ab12", api=emulator.api_client()))
            odd = EngineSpec(experiment=experiment, run_id="20261202-120000-ab12", trial_id="4f2a_00001",
                             profile=LLAMA_CPP, executable="", model_path="$(MODEL_PATH)", served_name="smollm2",
                             flags={}, workdir=tmp_path / experiment[:8])
            deployer.deploy(odd)
        assert len(emulator.objects(PLURAL, NS)) == 3
        assert len(emulator.objects("leases", NS)) == 4  # the fixture's run and these three


def test_the_pod_comes_up_pending_then_not_ready_and_the_trial_waits_for_ready(emulator, controller, tmp_path):
    core = client.CoreV1Api(emulator.api_client())
    since = core.list_namespaced_pod(NS).metadata.resource_version
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    with deployer.deployed(spec(tmp_path, {"ctx-size": 1024}), ready_timeout_s=60) as endpoint:
        with urllib.request.urlopen(endpoint.url + "/health", timeout=10) as response:
            assert response.status == 200  # Ready meant the engine answers
        history = watch.Watch().stream(core.list_namespaced_pod, NS, resource_version=since, timeout_seconds=1,
                                       _request_timeout=10)
        states = []
        for event in history:
            pod = event["object"]
            waiting = [c.state.waiting.reason for c in pod.status.container_statuses or [] if c.state.waiting]
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            states.append((pod.status.phase, waiting[0] if waiting else None, ready))
        reasons = [e.reason for e in core.list_namespaced_event(NS).items]
    assert states[0] == ("Pending", None, False)  # created at once, not yet scheduled
    assert ("Pending", "ContainerCreating", False) in states
    assert ("Running", None, False) in states  # the engine started, not answering yet
    assert states[-1] == ("Running", None, True)
    assert reasons[:2] == ["Scheduled", "Started"]


def test_an_engine_that_exits_before_ready_fails_the_trial_from_its_crash_loop(emulator, controller, tmp_path):
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    began = time.monotonic()
    with pytest.raises(DeploymentError, match="CrashLoopBackOff") as caught:
        with deployer.deployed(spec(tmp_path, {"ctx-size": "many"}), ready_timeout_s=120):
            pass
    assert time.monotonic() - began < 30  # from the pod's state, not the deadline
    assert emulator.objects(PLURAL, NS) == []
    # Why, in the engine's words (llama-server's, from its exited run's log), and that log kept.
    said = str(caught.value).split("; its log: ")[1]
    log = (tmp_path / "t0001" / "engine.log").read_text()
    assert "its run before the restart" in log and said in log and "--ctx-size" in said


def test_a_crash_looping_engine_is_explained_by_its_last_runs_exception(emulator, tmp_path):
    FakeOme(emulator, "unused", "unused", tmp_path, scenario="crashloop")
    with pytest.raises(DeploymentError) as caught:
        with OmeDeployer(settings(), api=emulator.api_client()).deployed(spec(tmp_path, {}), ready_timeout_s=60):
            pass
    assert str(caught.value).endswith("; its log: RuntimeError: Not enough memory. Please try to increase "
                                      "--mem-fraction-static.")
    log = (tmp_path / "t0001" / "engine.log").read_text()
    assert "==> pod ome-test-run1-t0001-engine-0, container ome-container, its run before the restart" in log
    assert "Scheduler hit an exception: Traceback (most recent call last):" in log


def _deleted(emulator, pod):
    emulator.delete_pod(NS, pod["metadata"]["name"])


def _evicted(emulator, pod):
    pod["status"] = {"phase": "Failed", "reason": "Evicted",
                     "message": "The node was low on resource: memory."}
    emulator.put_pod(NS, pod)


def _restarted(emulator, pod):
    (status,) = pod["status"]["containerStatuses"]
    status.update(restartCount=1, lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}})
    emulator.put_pod(NS, pod)


@pytest.mark.parametrize("happen, expected", [
    (_deleted, "engine pod ome-test-run1-t0001-engine-0 was deleted during the benchmark"),
    (_evicted, "failed during the benchmark: Evicted The node was low on resource: memory."),
    (_restarted, "restarted during the benchmark (container ome-container last exited: OOMKilled, code 137)"),
])
def test_an_engine_pod_lost_mid_benchmark_is_reported_at_once(emulator, controller, tmp_path, happen, expected):
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    with deployer.deployed(spec(tmp_path, {"ctx-size": 1024}), ready_timeout_s=60) as endpoint:
        assert endpoint.failure() is None  # serving
        (pod,) = emulator.objects("pods", NS)
        happen(emulator, pod)
        deadline = time.monotonic() + 10
        while endpoint.failure() is None and time.monotonic() < deadline:
            time.sleep(0.25)  # as often as the benchmark asks
        assert expected in (endpoint.failure() or "")
        reads = len(_log_reads(emulator))
    # The teardown reads no log after a crash: engine.log keeps what the crash left (its run before).
    assert len(_log_reads(emulator)) == reads


def test_sglang_trial_requests_tp_times_dp_gpus(emulator, tmp_path):
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    deployment = deployer.deploy(spec(tmp_path, {"tp-size": 2, "dp-size": 2, "mem-fraction-static": 0.85},
                                      profile=SGLANG))
    runner = emulator.objects(PLURAL, NS)[0]["spec"]["engine"]["runner"]
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert runner["args"] == ["--tp-size", "2", "--dp-size", "2", "--mem-fraction-static", "0.85"]
    deployer.teardown(deployment)


def test_cleanup_deletes_only_our_labelled_leftovers(emulator, tmp_path):
    ours = {"apiVersion": "ome.io/v1beta1", "kind": "InferenceService", "spec": {}}
    emulator.put(GROUP, VERSION, NS, PLURAL, ours | {"metadata": {"name": "left-1", "namespace": NS,
                                                                  "labels": labels("exp", "dead-run", "t1")}})
    emulator.put(GROUP, VERSION, NS, "benchmarkjobs", ours | {"kind": "BenchmarkJob", "metadata": {
        "name": "left-2", "namespace": NS, "labels": labels("exp", "dead-run", "t1")}})
    emulator.put(GROUP, VERSION, NS, PLURAL, ours | {"metadata": {"name": "someone-elses", "namespace": NS,
                                                                  "labels": {"app": "prod"}}})
    removed = delete_labelled(settings(), "autotuner.io/experiment=exp", skip_live_runs=True,
                              api=emulator.api_client())
    assert sorted(removed) == [("BenchmarkJob", "left-2"), ("InferenceService", "left-1")]
    # A Foreground delete: gone once the garbage collector is done with it.
    assert until(lambda: [o["metadata"]["name"] for o in emulator.objects(PLURAL, NS)] == ["someone-elses"], 5)


def test_names_are_valid_unique_and_short():
    import re

    names = {resource_name("My_Task.v2", f"trial{i:05d}") for i in range(200)}
    assert len(names) == 200
    long = resource_name("x" * 80, "abc")
    assert len(long) <= 63
    for name in names | {long, resource_name("9lives", "a")}:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    assert resource_name("exp", "t1") == "exp-t1"
    assert resource_name("a-b", "c") != resource_name("a", "b-c")
    assert resource_name("a-b", "c", "r1") != resource_name("a", "b-c", "r1")


def test_a_context_the_kubeconfig_lacks_is_refused_before_the_last_results_are_moved(tmp_path, monkeypatch, capsys):
    import yaml

    from llm_autotuner.tuner import cli

    with KubeEmulator() as emulator:
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")  # names the context "emulator" only
    task = {"name": "ctx", "model": {"name": "org/model", "tokenizer": "org/model"}, "engine": {"name": "sglang", "args": {"tp-size": 1}},
            "deployment": {"backend": "ome", "namespace": NS, "model": "m", "runtime": "r", "gpu_budget": 2,
                           "kubeconfig": str(kubeconfig), "context": "production"},
            "search_space": {"tp-size": [1, 2]}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    earlier = tmp_path / "results" / "ctx" / "results.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "run"):
        assert cli.main([command, "task.yaml"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("autotuner: error: deployment.context: "), err
        assert "production" in err
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["ctx"] and earlier.read_text() == "{}"
    # The pod a RayJob runs uses its own service account: the local kubeconfig is not its concern.
    assert cli.main(["kuberay", "task.yaml", "--image", "registry/autotuner:1"]) == 0


@pytest.mark.parametrize("instead", [None, 504])
def test_a_create_whose_answer_is_lost_is_made_again_once(emulator, tmp_path, instead):
    # The API made the object, then the connection broke (or the server timed out) before the
    # answer: asked again, the API says it exists; that one goes and the trial's is made anew.
    # The config is not failed for the API's trouble, and exactly one InferenceService holds GPUs.
    emulator.lose_answer_to_next("POST", "/inferenceservices$", instead)
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    deployment = deployer.deploy(spec(tmp_path, {}))
    posts = [r for r in emulator.requests if r.method == "POST" and r.path.endswith("/inferenceservices")]
    assert len(posts) == 3  # lost, refused as existing, made
    custom = client.CustomObjectsApi(emulator.api_client())
    assert [o["metadata"]["name"] for o in custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]] \
        == [deployment.name]


def test_a_throttled_create_is_asked_again_not_blamed_on_the_config(emulator, tmp_path):
    emulator.fail_next("POST", "/inferenceservices", 429, "TooManyRequests", times=2)
    deployment = OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, {}))
    assert [o["metadata"]["name"] for o in emulator.objects(PLURAL, NS)] == [deployment.name]


def test_a_create_the_api_keeps_refusing_as_busy_fails_at_its_deadline(emulator, tmp_path, monkeypatch):
    from llm_autotuner.cluster import kube

    monkeypatch.setattr(kube, "REQUEST_TIMEOUT_S", 3)
    emulator.fail_next("POST", "/inferenceservices", 503, "ServiceUnavailable", times=1000)
    began = time.monotonic()
    with pytest.raises(DeploymentError, match="503"):
        OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, {}))
    assert time.monotonic() - began < 15
    assert emulator.objects(PLURAL, NS) == []


def test_a_port_forward_whose_handshake_stalls_fails_that_connection_only(emulator, tmp_path, monkeypatch):
    # The client's websocket connect has no deadline: one stalled handshake used to hold up every
    # later connection of the trial's benchmark behind it, for good.
    import http.server
    import threading

    from llm_autotuner.cluster import portforward

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    emulator.put_pod(NS, {"metadata": {"name": "engine-0"}})
    emulator.set_pod_target(NS, "engine-0", 8080, server.server_address)
    monkeypatch.setattr(portforward, "CONNECT_TIMEOUT_S", 2.0)
    emulator.stall_port_forwards(1)
    forward = portforward.PortForward(emulator.api_client(), NS, "engine-0", 8080)
    try:
        started = time.monotonic()
        with pytest.raises(Exception):  # the stalled one: closed after the deadline, not left hanging
            urllib.request.urlopen(forward.url, timeout=20).read()
        assert time.monotonic() - started < 10
        assert urllib.request.urlopen(forward.url, timeout=20).read() == b"ok"  # the next one is not held up
    finally:
        forward.close()
        server.shutdown()
        server.server_close()


def test_a_webhook_denial_fails_the_config_with_the_webhooks_words(emulator, tmp_path):
    # Not an RBAC problem (which stops the run): a validating webhook judged this config.
    from llm_autotuner.errors import InfrastructureError

    said = 'admission webhook "vinferenceservice.ome.io" denied the request: tensor parallel size exceeds GPUs'
    emulator.fail_next("POST", "/inferenceservices", 403, "Forbidden", said)
    with pytest.raises(DeploymentError) as caught:
        OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, {}))
    assert not isinstance(caught.value, InfrastructureError)
    assert said in str(caught.value)


def test_a_trial_ray_runs_again_replaces_its_earlier_attempts_inference_service(emulator, tmp_path):
    # Ray runs a trial again (same id, same name) when its worker was lost before the teardown:
    # the earlier attempt's object is still there, and its GPUs with it.
    OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, {"ctx-size": 1024}))  # the lost attempt
    again = OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, {"ctx-size": 1024}))
    custom = client.CustomObjectsApi(emulator.api_client())
    assert [o["metadata"]["name"] for o in custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]] \
        == [again.name]


def test_a_busy_api_while_the_engine_starts_is_waited_out_not_blamed_on_the_config(emulator, controller, tmp_path):
    # 429 (throttled) and 503 (the API server or its etcd busy) say "not now": a trial failed on
    # one would teach the searcher that a good config is bad.
    emulator.fail_next("GET", "/inferenceservices$", 429, "TooManyRequests", times=2)  # the readiness watch
    emulator.fail_next("GET", "/pods$", 503, "ServiceUnavailable", times=2)
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    with deployer.deployed(spec(tmp_path, {"ctx-size": 1024}), ready_timeout_s=60) as endpoint:
        assert urllib.request.urlopen(endpoint.url + "/health", timeout=30).status == 200


def test_start_of_run_cleanup_waits_for_a_dead_runs_service_already_being_deleted(emulator, tmp_path):
    """A killed run's InferenceService whose deletion began (its teardown, the garbage collector) but
    is held by a finalizer still holds its GPUs: the next run's cleanup waits until it is gone."""
    emulator.set_deletion_delay(PLURAL, 3.0)
    leftover = {"apiVersion": "ome.io/v1beta1", "kind": "InferenceService", "spec": {},
                "metadata": {"name": "left-1", "namespace": NS, "labels": labels("ome-test", "dead-run", "t1")}}
    emulator.put(GROUP, VERSION, NS, PLURAL, leftover)
    client.CustomObjectsApi(emulator.api_client()).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                                                   "left-1")
    assert emulator.objects(PLURAL, NS)[0]["metadata"]["deletionTimestamp"]
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    said = OmeBackend(settings(kubeconfig=str(kubeconfig))).cleanup("ome-test")
    assert emulator.objects(PLURAL, NS) == []  # gone when cleanup returns, not later
    assert said == [f"InferenceService left-1 in {NS}"]


def unschedulable_after_a_deletion(emulator, tmp_path, deletion_s: float):
    """Trial t0001's InferenceService deleted, held by a finalizer for `deletion_s`; then trial
    t0002's created, whose pod is unschedulable. (deployer, t0002's deployment)."""
    FakeOme(emulator, "unused", "unused", tmp_path, scenario="unschedulable")
    emulator.set_deletion_delay(PLURAL, deletion_s)
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    earlier = deployer.deploy(spec(tmp_path, {}, trial="t0001"))
    client.CustomObjectsApi(emulator.api_client()).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                                                   earlier.name)
    return deployer, deployer.deploy(spec(tmp_path, {}, trial="t0002"))


def test_an_unschedulable_pod_waits_while_an_earlier_trial_of_the_run_is_still_being_deleted(emulator, tmp_path):
    """Ray gave this trial the GPUs of an earlier one whose InferenceService a finalizer still holds:
    the pod is unschedulable until it goes, which is not this config's fault."""
    # Longer than two looks at the pods (one per watch segment, WATCH_SEGMENT_S) with the grace between.
    started = time.monotonic()
    deployer, deployment = unschedulable_after_a_deletion(emulator, tmp_path, deletion_s=12.0)
    with pytest.raises(DeploymentError, match="unschedulable for 1 s"):
        deployer.wait_ready(deployment, time.monotonic() + 60)
    assert time.monotonic() - started >= 12.0  # failed only once the earlier one was gone
    assert [o["metadata"]["name"] for o in emulator.objects(PLURAL, NS)] == [deployment.name]


@pytest.mark.parametrize("status, reason", [(503, "ServiceUnavailable"), (429, "TooManyRequests")])
def test_a_delete_the_api_is_too_busy_for_is_asked_again(emulator, tmp_path, status, reason):
    """(A dropped connection the client's urllib3 retries itself: a DELETE is idempotent.)"""
    deployer = OmeDeployer(settings(), api=emulator.api_client())
    deployment = deployer.deploy(spec(tmp_path, {}))
    emulator.fail_next("DELETE", f"/inferenceservices/{deployment.name}$", status, reason, times=2)
    deployer.teardown(deployment)
    assert emulator.objects(PLURAL, NS) == []  # gone when the teardown returns


def test_an_unschedulable_pod_waits_for_a_stuck_deletion_only_as_long_as_a_teardown_does(emulator, tmp_path,
                                                                                         monkeypatch):
    """A finalizer that never finishes: the truly unschedulable config still fails, after DELETE_WAIT_S,
    not at the ready deadline."""
    monkeypatch.setattr(ome, "DELETE_WAIT_S", 6)
    deployer, deployment = unschedulable_after_a_deletion(emulator, tmp_path, deletion_s=3600.0)
    started = time.monotonic()
    with pytest.raises(DeploymentError, match=r"unschedulable for 1 s: .* \(an earlier trial's InferenceService, "
                                              r"still being deleted after 6 s, may hold its GPUs\)"):
        deployer.wait_ready(deployment, time.monotonic() + 120)
    assert time.monotonic() - started < 30


def test_the_end_of_run_wait_asks_again_when_the_api_is_busy(emulator):
    """The run's last step (settle: its objects gone) must not fail because one list was answered
    503: it asks again within its deadline. (A dropped connection urllib3 itself retries for a GET.)"""
    from llm_autotuner.cluster.cleanup import wait_until_gone

    ours = {"apiVersion": "ome.io/v1beta1", "kind": "InferenceService", "spec": {}}
    emulator.put(GROUP, VERSION, NS, PLURAL, ours | {"metadata": {"name": "going", "namespace": NS,
                                                                  "labels": labels("exp", "run-1", "t1")}})
    delete_labelled(settings(), "autotuner.io/run=run-1", api=emulator.api_client())
    emulator.fail_next("GET", f"/{PLURAL}$", 503, "ServiceUnavailable", times=2)
    assert wait_until_gone(settings(), "autotuner.io/run=run-1", 20, api=emulator.api_client()) == []
    assert emulator.objects(PLURAL, NS) == []
