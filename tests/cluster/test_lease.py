"""A run's liveness in the cluster (cluster/lease.py) against the API emulator, whose garbage
collector deletes objects by ownerReferences as Kubernetes' does."""

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from llm_autotuner.cluster.cleanup import delete_labelled
from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import LLAMA_CPP
from llm_autotuner.cluster.kube import labels
from llm_autotuner.cluster import lease as lease_module
from llm_autotuner.cluster.lease import HOLDER, LEASE_S, SKEW_S, RunLease, lease_name
from llm_autotuner.cluster.ome import OmeDeployer
from llm_autotuner.cluster.records import host_id
from llm_autotuner.errors import InfrastructureError
from llm_autotuner.task import OmeDeployment
from tests.conftest import until
from tests.fake_ome import GROUP, PLURAL, VERSION, FakeOme
from tests.k8s_emulator import KubeEmulator

NS = "tuning"


@pytest.fixture
def emulator():
    with KubeEmulator() as running:
        yield running


def settings() -> OmeDeployment:
    return OmeDeployment(backend="ome", namespace=NS, model="smollm2", runtime="srt-smollm2", gpu_budget=4,
                         endpoint="port-forward")


def spec(tmp_path, run_id, trial="t1") -> EngineSpec:
    return EngineSpec(experiment="exp", run_id=run_id, trial_id=trial, profile=LLAMA_CPP, executable="",
                      model_path="$(MODEL_PATH)", served_name="smollm2", flags={}, workdir=tmp_path / trial)


def names(emulator, plural="inferenceservices") -> list[str]:
    return sorted(o["metadata"]["name"] for o in emulator.objects(plural, NS))


def test_the_lease_is_renewed_while_the_run_holds_it_and_deleted_at_its_end(emulator):
    with RunLease(settings(), "exp", "20261202-120000-ab12", api=emulator.api_client(), renew_s=0.5) as lease:
        (first,) = emulator.objects("leases", NS)
        assert first["spec"]["leaseDurationSeconds"] == LEASE_S and first["spec"]["holderIdentity"]
        assert first["metadata"]["labels"] == labels("exp", "20261202-120000-ab12")
        assert until(lambda: emulator.objects("leases", NS)[0]["spec"]["renewTime"] != first["spec"]["renewTime"], 5)
        assert lease.name == lease_name("exp", "20261202-120000-ab12")
    assert emulator.objects("leases", NS) == []


def test_every_inference_service_belongs_to_its_runs_lease_and_goes_with_it(emulator, tmp_path):
    """Nobody runs cleanup: the run's Lease is deleted (its end, or its driver pod deleted) and the
    garbage collector removes the run's InferenceServices, and their pods with them."""
    FakeOme(emulator, "unused", "unused", tmp_path, scenario="crashloop")  # a pod, owned by its service
    run = RunLease(settings(), "exp", "r-1", api=emulator.api_client())
    with run:
        OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, "r-1"))
        (isvc,) = emulator.objects(PLURAL, NS)
        (owner,) = isvc["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("Lease", run.name)
        assert owner["uid"] == emulator.objects("leases", NS)[0]["metadata"]["uid"]
        assert until(lambda: names(emulator, "pods") != [], 5)
    # The teardown that should have deleted it never ran (a driver killed mid-trial, say).
    assert until(lambda: names(emulator) == [] and names(emulator, "pods") == [], 10)
    assert [f"{PLURAL}/{isvc['metadata']['name']}"] == [c for c in emulator.collected if c.startswith(PLURAL)]


def test_a_driver_in_a_pod_owns_its_lease_so_deleting_the_pod_removes_the_run(emulator, tmp_path, monkeypatch):
    pod = emulator.put_pod(NS, {"metadata": {"name": "autotuner-driver", "namespace": NS}, "status": {}})
    monkeypatch.setenv("AUTOTUNER_POD_NAME", "autotuner-driver")
    monkeypatch.setenv("AUTOTUNER_POD_UID", pod["metadata"]["uid"])
    monkeypatch.setenv("AUTOTUNER_POD_NAMESPACE", NS)
    with RunLease(settings(), "exp", "r-1", api=emulator.api_client()):
        OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, "r-1"))
        emulator.delete_pod(NS, "autotuner-driver")  # the RayJob finished and its pod was removed
        assert until(lambda: emulator.objects("leases", NS) == [] and names(emulator) == [], 10)


def test_an_owner_in_another_namespace_is_never_named(emulator, monkeypatch):
    # The garbage collector would take it for a missing owner and delete the Lease at once.
    monkeypatch.setenv("AUTOTUNER_POD_NAME", "driver")
    monkeypatch.setenv("AUTOTUNER_POD_UID", "1234")
    monkeypatch.setenv("AUTOTUNER_POD_NAMESPACE", "ray-system")
    with RunLease(settings(), "exp", "r-1", api=emulator.api_client()):
        time.sleep(1)
        assert emulator.objects("leases", NS)[0]["metadata"].get("ownerReferences") in (None, [])


def test_no_object_is_deployed_for_a_run_whose_lease_is_gone(emulator, tmp_path):
    with pytest.raises(InfrastructureError, match=f"this run's Lease {lease_name('exp', 'r-1')} in namespace {NS} is gone"):
        OmeDeployer(settings(), api=emulator.api_client()).deploy(spec(tmp_path, "r-1"))
    assert names(emulator) == []


def _lease(emulator, run_id: str, renewed: datetime, holder: dict | None = None) -> dict:
    when = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return emulator.put("coordination.k8s.io", "v1", NS, "leases", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease_name("exp", run_id), "labels": labels("exp", run_id),
                     "annotations": {HOLDER: json.dumps(holder)} if holder else {}},
        "spec": {"holderIdentity": "a driver", "leaseDurationSeconds": LEASE_S, "renewTime": when}})


def _isvc(emulator, name: str, run_id: str, lease: dict | None) -> None:
    owners = [{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": lease["metadata"]["name"],
               "uid": lease["metadata"]["uid"]}] if lease else []
    emulator.put(GROUP, VERSION, NS, PLURAL, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                                              "metadata": {"name": name, "labels": labels("exp", run_id, "t1"),
                                                           "ownerReferences": owners}, "spec": {}})


def test_cleanup_from_any_host_deletes_only_what_dead_runs_left(emulator):
    emulator.set_gc_delay(1.0)  # long enough for cleanup to find what the garbage collector would take too
    now = datetime.now(timezone.utc)
    elsewhere = {"host": "another-host/boot", "pid": 1, "started": 1}
    dead_here = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_here.wait()
    leases = {
        "live-elsewhere": _lease(emulator, "live-elsewhere", now - timedelta(seconds=5), elsewhere),
        # Renewed long ago by the clock, even allowing for the hosts' clocks differing by SKEW_S.
        "expired": _lease(emulator, "expired", now - timedelta(seconds=LEASE_S + SKEW_S + 5), elsewhere),
        "killed-here": _lease(emulator, "killed-here", now - timedelta(seconds=5),
                              {"host": host_id(), "pid": dead_here.pid, "started": 0}),
    }
    for run_id, lease in leases.items():
        _isvc(emulator, f"isvc-{run_id}", run_id, lease)
    _isvc(emulator, "isvc-lease-gone", "gone", {"metadata": {"name": "exp-gone-run", "uid": "no-such-uid"}})
    _isvc(emulator, "isvc-no-lease", "old-version", None)

    removed = delete_labelled(settings(), "autotuner.io/experiment=exp", skip_live_runs=True,
                              api=emulator.api_client())

    assert sorted(removed) == [("InferenceService", "isvc-expired"), ("InferenceService", "isvc-killed-here"),
                               ("InferenceService", "isvc-lease-gone"), ("InferenceService", "isvc-no-lease"),
                               ("expired Lease", leases["expired"]["metadata"]["name"]),
                               ("expired Lease", leases["killed-here"]["metadata"]["name"])]
    assert until(lambda: names(emulator) == ["isvc-live-elsewhere"], 10)
    assert names(emulator, "leases") == [leases["live-elsewhere"]["metadata"]["name"]]



def test_renewals_failing_for_half_the_lease_are_warned_of_once(emulator, monkeypatch, capsys):
    """A run whose Lease goes unrenewed past LEASE_S reads as dead to any cleanup: said while there
    is time, once, whatever the API answers (here: RBAC taken away)."""
    monkeypatch.setattr(lease_module, "LEASE_S", 2)
    emulator.fail_next("PATCH", "/leases/", 403, times=1000)
    with RunLease(settings(), "exp", "20261202-120000-ab12", api=emulator.api_client(), renew_s=0.1):
        assert until(lambda: "not renewed for" in capsys.readouterr().out, 10)
        time.sleep(1.0)
        assert "not renewed" not in capsys.readouterr().out  # once


def test_a_renewal_the_api_leaves_unanswered_is_given_up_for_the_next_one(emulator):
    """An API server that never answers one PATCH (a stuck load balancer) must not hold the renewals
    up for a whole request timeout (30 s) and more: the run would read as dead to any cleanup while
    it runs. The stuck renewal is given up when the next is due, and that one renews the Lease."""
    emulator.stall_next("PATCH", "/leases/")
    with RunLease(settings(), "exp", "20261202-120000-ab12", api=emulator.api_client(), renew_s=1.0):
        (created,) = emulator.objects("leases", NS)
        began = time.monotonic()
        assert until(lambda: emulator.objects("leases", NS)[0]["spec"]["renewTime"] != created["spec"]["renewTime"],
                     10)
        assert time.monotonic() - began < 10
    patches = [r for r in emulator.requests if r.method == "PATCH" and "/leases/" in r.path]
    assert len(patches) >= 2  # the stalled one, then the one that renewed
