"""The BenchmarkJob runner against the Kubernetes API emulator: create, read stages as they land, delete."""

import json
import threading
import time
from pathlib import Path

import pytest

from llm_autotuner.cluster.deployer import Endpoint
from tests.conftest import until
from tests.k8s_emulator import KubeEmulator
from llm_autotuner.trainables.benchmark_job import BenchmarkJobRunner
from llm_autotuner.errors import BenchmarkError
from llm_autotuner.cluster.lease import RunLease, lease_name
from llm_autotuner.task import OmeDeployment, parse_task

NS = "tuning"
REAL_FILE = Path(__file__).parent.parent / "data" / "D100_64_text-to-text_num_concurrency_4_time_9s.json"
ENDPOINT = Endpoint("http://127.0.0.1:1", "http://exp-t0001.tuning.svc.cluster.local:8080")


@pytest.fixture
def emulator():
    with KubeEmulator() as running:
        settings = OmeDeployment(backend="ome", namespace=NS, model="m", runtime="r", gpu_budget=1)
        with RunLease(settings, "exp", "run1", api=running.api_client()):  # the run the trials belong to
            yield running


def gone(emulator, plural) -> bool:
    """Deleted in the foreground: gone once the garbage collector has finished with it."""
    return until(lambda: emulator.objects(plural, NS) == [], 5)


def runner_for(emulator, tmp_path) -> BenchmarkJobRunner:
    task = parse_task({
        "name": "exp", "model": {"name": "smollm2"}, "engine": {"name": "sglang"},
        "deployment": {"backend": "ome", "namespace": NS, "model": "m", "runtime": "r", "gpu_budget": 1,
                       "kubeconfig": str(emulator.write_kubeconfig(tmp_path / "kubeconfig"))},
        "search_space": {"tp-size": [1]},
        "benchmark": {"runner": "benchmarkjob", "concurrency": [1, 4], "stage_timeout_s": 20,
                      "benchmark_job": {"output_storage_uri": "pvc://results/bench", "results_mount": str(tmp_path / "mnt"),
                                        "timeout_s": 20}},
    })
    return BenchmarkJobRunner(task, "run1", "sglang")


def fake_job_controller(emulator, tmp_path, final_state: str, stages_written: list[int]):
    """On create: write genai-bench result files where the PVC is mounted, one stage at a time, then finish."""
    def run(job):
        folder = tmp_path / "mnt" / "run1" / "t0001" / "some-experiment-folder"
        folder.mkdir(parents=True)
        for concurrency in stages_written:
            time.sleep(0.3)
            data = json.loads(REAL_FILE.read_text())
            data["aggregated_metrics"]["num_concurrency"] = concurrency
            (folder / f"D100_64_text-to-text_num_concurrency_{concurrency}_time_9s.json").write_text(json.dumps(data))
        emulator.set_status("ome.io", "v1beta1", NS, "benchmarkjobs", job["metadata"]["name"],
                            {"state": final_state, "details": "genai-bench exited with code 1"})

    emulator.on_create("benchmarkjobs", lambda job: threading.Thread(target=run, args=(job,), daemon=True).start())


def test_stages_are_read_as_they_land_and_the_job_is_deleted(emulator, tmp_path):
    fake_job_controller(emulator, tmp_path, "Completed", [1, 4])
    workdir = tmp_path / "trials" / "t0001"
    workdir.mkdir(parents=True)
    with runner_for(emulator, tmp_path).run(ENDPOINT, "smollm2", workdir) as results:
        measured = [(stage.concurrency, metrics["concurrency"], metrics["output_throughput"] > 0)
                    for stage, metrics in results]
    assert measured == [(1, 1, True), (4, 4, True)]
    job = next(r.body for r in emulator.requests if r.method == "POST" and r.path.endswith("/benchmarkjobs"))
    endpoint = job["spec"]["endpoint"]["endpoint"]
    assert endpoint["url"] == ENDPOINT.cluster_url and endpoint["modelName"] == "smollm2"
    assert job["spec"]["outputLocation"]["storageUri"] == "pvc://results/bench/run1/t0001"
    assert [(o["kind"], o["name"]) for o in job["metadata"]["ownerReferences"]] == [("Lease", lease_name("exp", "run1"))]
    assert gone(emulator, "benchmarkjobs")
    assert (workdir / "benchmark_job.yaml").is_file()


def test_a_failed_job_fails_the_trial_with_its_details(emulator, tmp_path):
    fake_job_controller(emulator, tmp_path, "Failed", [1])
    workdir = tmp_path / "trials" / "t0001"
    workdir.mkdir(parents=True)
    with pytest.raises(BenchmarkError, match="failed: genai-bench exited with code 1 before stage 2"):
        with runner_for(emulator, tmp_path).run(ENDPOINT, "smollm2", workdir) as results:
            for _ in results:
                pass
    assert gone(emulator, "benchmarkjobs")


def surviving_job_controller(emulator, tmp_path, stages_written: list[int]):
    """As fake_job_controller, but a job deleted before it starts writes nothing: only the job that
    is still there after a moment runs (the one the runner kept)."""
    def run(job):
        time.sleep(0.5)
        uid = job["metadata"]["uid"]
        if not any(o["metadata"]["uid"] == uid for o in emulator.objects("benchmarkjobs", NS)):
            return
        folder = tmp_path / "mnt" / "run1" / "t0001" / uid
        folder.mkdir(parents=True)
        for concurrency in stages_written:
            data = json.loads(REAL_FILE.read_text())
            data["aggregated_metrics"]["num_concurrency"] = concurrency
            (folder / f"D100_64_text-to-text_num_concurrency_{concurrency}_time_9s.json").write_text(json.dumps(data))
        emulator.set_status("ome.io", "v1beta1", NS, "benchmarkjobs", job["metadata"]["name"], {"state": "Completed"})

    emulator.on_create("benchmarkjobs", lambda job: threading.Thread(target=run, args=(job,), daemon=True).start())


@pytest.mark.parametrize("instead", [None, 504])
def test_a_create_whose_answer_is_lost_is_made_again_and_the_trial_benchmarks(emulator, tmp_path, instead):
    """The API stored the job, then its answer was lost (a dropped connection) or was a 5xx
    (etcd or a webhook timing out): a busy API is no verdict on the config. The create is asked
    again; its 409 says the first attempt was stored: that job is deleted and waited for (two jobs
    would load one engine at once), then made anew, and the stages are measured."""
    surviving_job_controller(emulator, tmp_path, [1, 4])
    emulator.lose_answer_to_next("POST", "/benchmarkjobs$", instead=instead)
    workdir = tmp_path / "trials" / "t0001"
    workdir.mkdir(parents=True)
    with runner_for(emulator, tmp_path).run(ENDPOINT, "smollm2", workdir) as results:
        jobs_while_measuring = len(emulator.objects("benchmarkjobs", NS))
        measured = [stage.concurrency for stage, _ in results]
    assert measured == [1, 4] and jobs_while_measuring == 1
    assert [r.method for r in emulator.requests if "/benchmarkjobs" in r.path][:4] == ["POST", "POST", "DELETE", "GET"]
    assert gone(emulator, "benchmarkjobs")


def test_a_create_the_api_keeps_dropping_fails_at_its_deadline_and_leaves_no_job(emulator, tmp_path, monkeypatch):
    from llm_autotuner.cluster import kube

    monkeypatch.setattr(kube, "REQUEST_TIMEOUT_S", 2)
    emulator.fail_next("POST", "/benchmarkjobs$", 503, "ServiceUnavailable", times=1000)
    workdir = tmp_path / "trials" / "t0001"
    workdir.mkdir(parents=True)
    began = time.monotonic()
    with pytest.raises(BenchmarkError, match="HTTP 503"):
        with runner_for(emulator, tmp_path).run(ENDPOINT, "smollm2", workdir):
            pass
    assert time.monotonic() - began < 20
    posts = [r for r in emulator.requests if r.method == "POST" and r.path.endswith("/benchmarkjobs")]
    assert len(posts) >= 2  # asked again while busy, not failed at the first "not now"
    assert gone(emulator, "benchmarkjobs")


def test_a_delete_the_api_answers_busy_is_asked_again(emulator, tmp_path):
    """A job left behind runs genai-bench against the next trial's engine: the delete is asked
    again while the API answers "not now" (here as the trial ends before its stages)."""
    emulator.fail_next("DELETE", "/benchmarkjobs/", 503, "ServiceUnavailable", times=2)
    workdir = tmp_path / "trials" / "t0001"
    workdir.mkdir(parents=True)
    with runner_for(emulator, tmp_path).run(ENDPOINT, "smollm2", workdir):
        pass
    assert [r.method for r in emulator.requests if "/benchmarkjobs" in r.path] == ["POST", "DELETE", "DELETE", "DELETE"]
    assert gone(emulator, "benchmarkjobs")
