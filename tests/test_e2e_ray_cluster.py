"""A search on a Ray cluster started separately (`autotuner run --address`), as on a cluster of GPU
nodes: Ray's own multi-node test cluster on this machine (a head and two nodes with 4 fake GPUs
each, separate raylets), the vLLM profile with a stand-in engine that records the GPUs it was given
and serves through llama-server (tests/data/gpu_engine_standin.py), real genai-bench. The tests
with a cluster of their own are in test_e2e_ray_cluster_lost_node.py and _nodes.py: pytest-xdist
runs a file on one worker, and all in one file took longer than the rest of the suite.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from tests.conftest import engine_processes
from tests.data.gpu_engine_standin import launcher
from tests.ray_clusters import GPUS_PER_NODE, run, vllm_task

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gpu_cluster():
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # its own: never another test's Ray
    os.makedirs("/tmp/ray", exist_ok=True)  # Ray's test cluster writes its address there
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "temp_dir": temp_dir,
                                                            "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=8, num_gpus=GPUS_PER_NODE)  # CPUs to spare: Ray packs small trials
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_trials_share_the_gpu_nodes_and_each_engine_sees_only_its_gpus(gpu_cluster, tmp_path, llama_server,
                                                                       smollm2, tokenizer, monkeypatch):
    log = tmp_path / "engines.jsonl"
    # The trials' files go through a storage filesystem the test gives (as an object store is
    # reached: trials upload), not into the driver's results folder.
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("AUTOTUNER_TEST_STORAGE", str(shared))
    binary = launcher(tmp_path / "vllm", llama_server, log)
    served = f"gpus-{uuid.uuid4().hex[:8]}"
    # Four 2-GPU trials at once fill both 4-GPU nodes: both nodes busy, two engines on each. tp 8
    # fits no node and must not wait forever.
    task = vllm_task(tmp_path, tokenizer, smollm2, binary, served, {"tensor-parallel-size": [1, 2, 4, 8]},
                     num_samples=6, max_concurrent=4, baseline=False,
                     initial_points=[{"tensor-parallel-size": tp} for tp in (2, 2, 2, 2, 8)])
    task["storage"] = {"filesystem": "tests.data.storage_fs:make"}
    completed = run(task, tmp_path / "task.yaml", gpu_cluster.address)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "gpus" / "results.json").read_text())
    trials = results["all_results"]
    assert results["total_experiments"] == 6 and len(trials) == 6  # none left pending
    too_big = [t for t in trials if t["parameters"].get("tensor-parallel-size") == 8]
    assert too_big and all(t["status"] == "infeasible" for t in too_big)
    assert all("needs 8 GPU on one node; the largest Ray node has 4" in t["infeasible_because"] for t in too_big), too_big
    assert all(t["status"] == "completed" for t in trials if t not in too_big), trials

    events = [json.loads(line) for line in log.read_text().splitlines()]
    starts = {e["pid"]: e for e in events if e["event"] == "start"}
    ends = {e["pid"]: e["time"] for e in events if e["event"] == "exit"}
    engines = [{"start": e["time"], "end": ends[pid], "node": e["raylet"], "tp": int(e["flags"].get(
                "--tensor-parallel-size", 1)), "gpus": set(e["gpus"].split(","))} for pid, e in starts.items()]
    assert len(engines) == len(trials) - len(too_big)  # every trial that fits a node; each engine exited
    for engine in engines:
        assert len(engine["gpus"]) == engine["tp"]  # exactly its claim: Ray's assignment, no more
        assert engine["gpus"] <= {str(i) for i in range(GPUS_PER_NODE)}
    assert len({engine["node"] for engine in engines}) == 2
    pairs = [(a, b) for i, a in enumerate(engines) for b in engines[i + 1:] if overlap(a, b)]
    assert any(a["node"] != b["node"] for a, b in pairs), engines  # both nodes busy at once
    neighbours = [(a, b) for a, b in pairs if a["node"] == b["node"]]
    assert neighbours, engines
    for a, b in neighbours:
        assert not a["gpus"] & b["gpus"], (a, b)  # never one GPU for two engines at once
    assert engine_processes(served) == set()

    # Every trial's files are in the storage, filed under its id; none in the driver's results folder.
    assert results["trial_files"] == f"subtree:{shared}/gpus/trials"
    for trial in trials:
        folder = shared / "gpus" / "trials" / trial["trial_id"]
        marks = json.loads((folder / "timeline.json").read_text())
        assert "trial_end" in marks, trial
        if trial not in too_big:
            assert (folder / "engine_argv.json").is_file() and (folder / "engine.log").stat().st_size > 0
            logged = (folder / "genai-bench" / "requests.jsonl").read_text().splitlines()
            assert len(logged) == trial["stages"][0]["num_requests"] >= 8, trial  # each request of the stage
    assert (shared / "gpus" / "tune" / "tuner.pkl").is_file()
    assert not (shared / "gpus" / "trials" / ".incoming").exists()
    winner = ["best_command.txt", "best.json"] if results["best_result"] else []
    assert sorted(p.name for p in (tmp_path / "results" / "gpus").iterdir()) == sorted(
        ["results.json", "trials.csv", "index.html", "plots"] + winner)  # the summaries and the report only


def test_a_space_that_fits_no_node_is_refused_in_one_line(gpu_cluster, tmp_path, llama_server, smollm2, tokenizer):
    binary = launcher(tmp_path / "vllm", llama_server, tmp_path / "engines.jsonl")
    task = vllm_task(tmp_path, tokenizer, smollm2, binary, "gpus-none", {"tensor-parallel-size": [8, 16]})
    completed = run(task, tmp_path / "task.yaml", gpu_cluster.address)
    assert completed.returncode == 2, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert ("autotuner: error: search_space: even its smallest config needs 8 GPU on one node; the largest Ray node "
            "has 4; no trial could run\n") in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "engines.jsonl").exists()


def test_without_an_address_a_run_starts_its_own_ray_even_next_to_a_running_cluster(gpu_cluster):
    """A `ray start` cluster on the machine (gpu_cluster: its address is in /tmp/ray/ray_current_cluster,
    where a bare ray.init() looks) is not joined by a run given no --address: it would take the
    run's trials and refuse its custom resources (an OME run's GPU budget)."""
    # Ray wrote it when the cluster started; written again here, as another test's cluster (other
    # pytest workers run them alongside) rewrites the same file and removes it when it stops.
    Path("/tmp/ray/ray_current_cluster").write_text(gpu_cluster.address)
    probe = ("import ray\n"
             "from llm_autotuner.tuner.driver import start_ray\n"
             "class Budget:\n"
             "    def offers(self): return {'ome_gpu': 2.0}\n"
             "start_ray(Budget(), None, dashboard=False)\n"
             "print(ray.get_runtime_context().gcs_address, ray.cluster_resources().get('ome_gpu'))\n"
             "ray.shutdown()\n")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    address, budget = completed.stdout.split()[-2:]
    assert address != gpu_cluster.address and budget == "2.0"
