"""A real Ray Tune run with the OME backend against the Kubernetes API emulator.

The emulator's fake OME controller starts an engine per InferenceService with the trial's flags:
in the main run the real llama-server, so genai-bench (through a port-forward) measures something
real; in the runs about the control flow (interrupts, slow deletions, the BenchmarkJob runner's
path) the instant stand-in (tests/conftest.py:instant_engine). What becomes of the
InferenceServices when the run is cut short or the cluster deletes slowly: test_e2e_ome_teardown.py.
"""

import json
import subprocess
import sys

import pytest
import ray
import yaml
from ray import tune

from tests.conftest import instant_engine
from tests.fake_ome import PLURAL, FakeBenchmarkJobs, FakeOme
from tests.k8s_emulator import KubeEmulator, RecordedRequest
from llm_autotuner.cluster.backend import trial_claim
from llm_autotuner.cluster.kuberay import rbac
from llm_autotuner.tuner.driver import trial_resources
from llm_autotuner.task import parse_task

pytestmark = pytest.mark.e2e
NS = "tuning"


def ome_task(tmp_path, kubeconfig, tokenizer, **search):
    return {
        "name": "ome-e2e",
        "model": {"name": "smollm2", "tokenizer": tokenizer},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 2048, "threads": 1}},
        "deployment": {"backend": "ome", "namespace": NS, "model": "smollm2", "runtime": "srt-smollm2",
                       "gpu_budget": 2, "endpoint": "port-forward", "kubeconfig": str(kubeconfig),
                       "ready_timeout_s": 120},
        "search_space": {"parallel": [1, 4], "ubatch-size": [256, 512]},
        "benchmark": {"traffic_scenario": "D(64,32)", "concurrency": [2, 4], "max_requests_per_stage": 8},
        "search": {"num_samples": 2, "seed": 1, "confirm_repeats": 0} | search,
        "results_dir": str(tmp_path / "results"),
    }


def not_granted(requests, namespace: str = NS, runtime: bool = False, port_forward: bool = True) -> list[str]:
    """The requests that the RBAC the tuner asks for (cluster/rbac.yaml, as `autotuner kuberay`
    renders it for this namespace) would refuse, as 'verb group/resource in scope'. Each request is
    judged as the API server's authorizer does: verb, API group, resource (with subresource) and
    scope: a Role grants only in its own namespace, a cluster-scoped request needs a ClusterRole."""
    documents = rbac(namespace, with_runtime=runtime, port_forward=port_forward)

    def grants(kind: str) -> set[tuple[str, str, str]]:
        return {(group, resource, verb) for d in documents if d["kind"] == kind for rule in d["rules"]
                for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}

    role_namespace = next(d["metadata"]["namespace"] for d in documents if d["kind"] == "Role")
    in_namespace, cluster_wide = grants("Role"), grants("ClusterRole")
    refused = []
    for request in requests:
        parts = request.path.split("?")[0].strip("/").split("/")
        if parts[0] == "api":
            group, rest = "", parts[2:]
        elif parts[0] == "apis" and len(parts) > 2:
            group, rest = parts[1], parts[3:]
        else:
            continue  # discovery (/version, /api, /apis): every authenticated client may read it
        scope = rest[1] if rest[:1] == ["namespaces"] and len(rest) > 2 else None
        rest = rest[2:] if scope else rest
        resource = "/".join([rest[0]] + rest[2:3])
        if request.method == "GET":
            verb = "watch" if request.query.get("watch") in ("true", "1", "True") else ("get" if len(rest) > 1 else "list")
        else:
            verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}[request.method]
        if resource.endswith("/portforward"):
            verb = "create"  # a WebSocket upgrade, authorized as create (rbac.yaml grants get and create)
        granted = (group, resource, verb) in cluster_wide or (
            scope == role_namespace and (group, resource, verb) in in_namespace)
        if not granted:
            refused.append(f"{verb} {group or 'core'}/{resource} in {scope or 'the cluster scope'}")
    return refused


def test_the_rbac_check_refuses_what_the_api_servers_authorizer_would():
    def request(method, path, **query):
        return RecordedRequest(method, path, query, None)

    allowed = [request("GET", f"/apis/ome.io/v1beta1/namespaces/{NS}/inferenceservices", watch="true"),
               request("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/run"),
               request("GET", f"/api/v1/namespaces/{NS}/pods/p/portforward"), request("GET", "/apis")]
    assert not_granted(allowed) == []
    assert not_granted([request("GET", "/apis/ome.io/v1beta1/inferenceservices"),  # every namespace at once
                        request("DELETE", f"/api/v1/namespaces/{NS}/pods/p"),
                        request("PATCH", "/apis/coordination.k8s.io/v1/namespaces/other/leases/run"),
                        request("POST", "/apis/ome.io/v1beta1/clusterservingruntimes")]) == [
        "list ome.io/inferenceservices in the cluster scope", f"delete core/pods in {NS}",
        "patch coordination.k8s.io/leases in other", "create ome.io/clusterservingruntimes in the cluster scope"]
    assert not_granted([request("POST", "/apis/ome.io/v1beta1/clusterservingruntimes")], runtime=True) == []
    assert not_granted([allowed[2]], port_forward=False) == [f"create core/pods/portforward in {NS}"]


def test_ray_tune_run_on_ome_against_the_emulator(tmp_path, llama_server, smollm2, tokenizer):
    with KubeEmulator() as emulator:
        controller = FakeOme(emulator, llama_server, smollm2, tmp_path)
        try:
            kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
            path = tmp_path / "task.yaml"
            path.write_text(yaml.safe_dump(ome_task(tmp_path, kubeconfig, tokenizer)))
            completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"],
                                       capture_output=True, text=True, timeout=600)
            requests = emulator.requests
            created = [r for r in requests if r.method == "POST" and r.path.endswith(PLURAL)]
            remaining = emulator.objects(PLURAL, NS)
            deletions = [d for d in emulator.deletions if d.plural == PLURAL]
        finally:
            controller.stop_all()
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "ome-e2e" / "results.json").read_text())
    assert results["total_experiments"] == 3 and results["successful_experiments"] == 3
    assert results["measured_via"] == ["port-forward"]  # the latencies include the tunnel, and say so
    assert "Measured through a port-forward" in completed.stdout
    for trial in results["all_results"]:
        assert trial["stages"] and all(s["output_throughput"] > 0 for s in trial["stages"])
    assert not_granted(requests) == []  # cluster/rbac.yaml allows everything the run did
    assert len(created) == 3  # one InferenceService per trial
    assert remaining == []  # every one deleted
    assert all(d.propagation_policy == "Foreground" for d in deletions)
    assert controller.engines == {}
    trial_dir = tmp_path / "results" / "ome-e2e" / "trials" / results["all_results"][1]["trial_id"]
    manifest = yaml.safe_load((trial_dir / "inference_service.yaml").read_text())
    args = manifest["spec"]["engine"]["runner"]["args"]
    assert args[:2] == ["--ctx-size", "2048"]
    assert args[args.index("--parallel") + 1] == str(results["all_results"][1]["parameters"]["parallel"])
    # Its engine's log, read from its pod (gone with the pod since): that trial's engine's, its
    # start-up and, read at the teardown, the requests it served while benchmarked.
    assert f"n_slots = {args[args.index('--parallel') + 1]}," in (trial_dir / "engine.log").read_text()
    for trial in results["all_results"]:
        log = (tmp_path / "results" / "ome-e2e" / "trials" / trial["trial_id"] / "engine.log").read_text()
        assert "| stop processing" in log and "(the log after the start-up was not read" not in log
    # The launch line names the engine's launcher as the runtime's image has it (it was '').
    line = (tmp_path / "results" / "ome-e2e" / "best_command.txt").read_text().split()
    assert line[0] == "llama-server" and "--ctx-size" in line


def test_a_full_run_with_the_benchmarkjob_runner_is_scored_like_the_direct_one(tmp_path, smollm2, tokenizer):
    """Each trial's load runs in the cluster as a BenchmarkJob (here: the real genai-bench, started by
    a stand-in for OME's benchmark controller, against the trial's real engine), writing to a claim
    the driver also mounts; the trial reads each stage's file as it lands and scores it with the
    same code as the direct runner's."""
    mount = tmp_path / "claim"
    with KubeEmulator() as emulator:
        controller = FakeOme(emulator, str(instant_engine(tmp_path / "engine")), smollm2, tmp_path)
        jobs = FakeBenchmarkJobs(emulator, controller, "pvc://results/bench", mount, tokenizer)
        try:
            kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
            task = ome_task(tmp_path, kubeconfig, tokenizer, num_samples=1, confirm_repeats=0)
            task["benchmark"] |= {"runner": "benchmarkjob", "benchmark_job": {
                "output_storage_uri": "pvc://results/bench", "results_mount": str(mount), "timeout_s": 300}}
            path = tmp_path / "task.yaml"
            path.write_text(yaml.safe_dump(task))
            completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"],
                                       capture_output=True, text=True, timeout=900)
            posted = [r.body for r in emulator.requests if r.method == "POST" and r.path.endswith("/benchmarkjobs")]
            left = emulator.objects("benchmarkjobs", NS) + emulator.objects(PLURAL, NS)
            requests = emulator.requests
        finally:
            jobs.stop_all()
            controller.stop_all()
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "ome-e2e" / "results.json").read_text())
    trials = results["all_results"]
    # the baseline and a searched trial, a job each
    assert len(trials) == 2 and len(posted) == 2, (trials, completed.stdout[-3000:], completed.stderr[-3000:])
    for trial, job in zip(trials, posted):
        assert trial["status"] == "completed"
        assert [s["concurrency"] for s in trial["stages"]] == [2, 4]
        for stage in trial["stages"]:
            # Timed from genai-bench's own file (no request log of ours runs in the job's pod).
            assert stage["timed"] == "genai-bench's run duration" and stage["output_throughput"] > 0
            # At least the stage's 8: genai-bench checks its request limit once a second, and an
            # engine that answers at once gets more in by then (20 asked, 27 sent, seen here).
            assert stage["error_rate"] == 0 and stage["num_completed_requests"] >= 8
        assert trial["objective_score"] == pytest.approx(sum(s["output_throughput"] for s in trial["stages"]) / 2)
        assert job["spec"]["endpoint"]["endpoint"]["url"].endswith(".svc.cluster.local:8080")
        assert job["metadata"]["ownerReferences"][0]["kind"] == "Lease"
    assert len(jobs.runs) == 2 and left == []
    assert not_granted(requests) == []


def test_trials_hold_gpus_from_the_budget_so_ray_runs_only_what_fits(tmp_path):
    task = parse_task({
        "name": "budget", "model": {"name": "m", "tokenizer": "t"}, "engine": {"name": "sglang"},
        "deployment": {"backend": "ome", "namespace": NS, "model": "m", "runtime": "r", "gpu_budget": 4},
        "search_space": {"tp-size": [2]},
    })
    assert trial_claim(task, {"tp-size": 2, "dp-size": 2}, node_cpus=2) == {"CPU": 1.0, "ome_gpu": 4.0}
    assert trial_claim(task, {"tp-size": 2}, node_cpus=2) == {"CPU": 1.0, "ome_gpu": 2.0}

    starts = tmp_path / "starts"
    starts.mkdir()

    def hold(config):
        # Each trial holds its GPUs until a second trial has started (or 60 s passed), then 3 s
        # more: concurrency is then seen however slowly a busy machine starts Ray's actors, and a
        # trial the budget should have kept waiting would have started within that hold.
        import time
        import uuid

        started = time.time()
        (starts / uuid.uuid4().hex).touch()
        while len(list(starts.iterdir())) < 2 and time.time() < started + 60:
            time.sleep(0.1)
        time.sleep(3.0)
        tune.report({"started": started, "ended": time.time()})

    ray.init(address="local", num_cpus=8, resources={"ome_gpu": 4}, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    try:
        grid = tune.Tuner(tune.with_resources(hold, trial_resources(task, 8, [{"CPU": 8, "ome_gpu": 4}])),
                          param_space={"tp-size": 2}, tune_config=tune.TuneConfig(num_samples=4),
                          run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    finally:
        ray.shutdown()
    spans = [(r.metrics["started"], r.metrics["ended"]) for r in grid]
    most_at_once = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most_at_once == 2  # 4 budget GPUs / 2 per trial, though 8 CPUs would allow 4


def test_a_forbidden_create_stops_the_run_instead_of_scoring_configs(tmp_path, tokenizer):
    """RBAC missing is the setup's fault, not the config's: no trial is fed to the searcher as bad."""
    with KubeEmulator() as emulator:
        emulator.fail_next("POST", f"/{PLURAL}$", 403, times=10)
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
        path = tmp_path / "task.yaml"
        path.write_text(yaml.safe_dump(ome_task(tmp_path, kubeconfig, tokenizer, num_samples=4, max_concurrent=1)))
        completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"],
                                   capture_output=True, text=True, timeout=600)
        posts = [r for r in emulator.requests if r.method == "POST" and r.path.endswith(PLURAL)]
    assert completed.returncode == 2, completed.stdout[-3000:] + completed.stderr[-3000:]
    message = completed.stderr.strip().splitlines()[-1]
    assert message.startswith("autotuner: stopped: the cluster refused what every trial needs: forbidden to create "
                              "InferenceService"), message
    assert len(posts) == 1  # the first trial's: none after it
