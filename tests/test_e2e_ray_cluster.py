"""A search on a Ray cluster started separately (`autotuner run --address`), as on a cluster of GPU
nodes: Ray's own multi-node test cluster on this machine (a head and two nodes with 4 fake GPUs
each, separate raylets), the vLLM profile with a stand-in engine that records the GPUs it was given
and serves through llama-server (tests/data/gpu_engine_standin.py), real genai-bench.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from ray.cluster_utils import Cluster

from tests.conftest import Driver, engine_processes
from tests.data.gpu_engine_standin import launcher

pytestmark = pytest.mark.e2e

GPUS_PER_NODE = 4


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


def vllm_task(tmp_path, tokenizer, smollm2, binary, served, space, **search):
    return {
        "name": "gpus",
        "model": {"path": smollm2, "name": served, "tokenizer": tokenizer},
        "engine": {"name": "vllm", "binary": binary},
        "search_space": space,
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [2], "max_requests_per_stage": 8},
        "search": {"algorithm": "random", "seed": 4, "confirm_top_k": 0} | search,
        "results_dir": str(tmp_path / "results"),
    }


def run(task: dict, path: Path, address: str) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(task))
    return subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--address", address],
                          capture_output=True, text=True, timeout=900)


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


@contextlib.contextmanager
def own_cluster(gpu_nodes: int):
    """A Ray cluster of the test's own: a head without GPUs and `gpu_nodes` 4-GPU nodes. Yields the
    cluster, its GPU nodes and its temp dir (for nodes started beside it)."""
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "temp_dir": temp_dir,
                                                            "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=8, num_gpus=GPUS_PER_NODE) for _ in range(gpu_nodes)]
        cluster.wait_for_nodes()
        yield cluster, nodes, temp_dir
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("phase", ["search", "confirmation"])
def test_a_trial_stranded_by_a_lost_node_stops_the_run_instead_of_waiting_forever(tmp_path, llama_server, smollm2,
                                                                                  tokenizer, phase):
    """The only node that can hold a 4-GPU trial dies mid-trial (in the search, or in the
    re-measurement of the finalists after it): Ray runs the trial again, but no live node can take
    it, so it would stay pending for ever. The run stops, saying why."""
    with own_cluster(gpu_nodes=1) as (cluster, [gpu_node], _):
        served = f"gpus-{uuid.uuid4().hex[:8]}"
        binary = launcher(tmp_path / "vllm", llama_server, tmp_path / "engines.jsonl")
        search = ({"num_samples": 2} if phase == "search" else
                  {"num_samples": 1, "confirm_top_k": 1, "confirm_repeats": 2})
        task = vllm_task(tmp_path, tokenizer, smollm2, binary, served, {"tensor-parallel-size": [4]},
                         baseline=False, **search)
        task["benchmark"] |= {"concurrency": [1, 2, 4], "max_requests_per_stage": 24}  # long enough to be cut
        path = tmp_path / "task.yaml"
        path.write_text(yaml.safe_dump(task))
        label = "trial" if phase == "search" else "confirm"
        with Driver(path, "--address", cluster.address) as driver:
            driver.read_until(f"{label} 1: stage 1/3", timeout_s=400)
            cluster.remove_node(gpu_node, allow_graceful=False)
            output = driver.finish(timeout_s=240)
        assert driver.process.returncode == 2, output[-4000:]
        assert "Traceback" not in output, output[-4000:]
        [reason] = [line for line in output.splitlines() if line.startswith("autotuner: stopped")]
        assert reason.startswith(f"autotuner: stopped: {label} ") and "needs 4 GPU on one node" in reason, reason
        assert "was lost or left the cluster" in reason, reason
        results = json.loads((tmp_path / "results" / "gpus" / "results.json").read_text())
        assert results["in_progress"] is False and results["stopped_because"] == reason.removeprefix("autotuner: ")
        assert engine_processes(served) == set()


@contextlib.contextmanager
def node_that_cannot_see(folder: Path, head_address: str, temp_dir: str, *resources: str):
    """A Ray node (`ray start --address`, with `resources` such as `--num-gpus 4`) in its own mount
    namespace, where `folder` is an empty tmpfs: a machine of the cluster that does not share the
    driver's files."""
    script = ("import os, subprocess, sys\n"
              "subprocess.run(['mount', '-t', 'tmpfs', 'none', sys.argv[1]], check=True)\n"
              "os.execv(sys.argv[2], sys.argv[2:])\n")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    node = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script,
                             str(folder), ray_cli, "start", "--address", head_address, "--num-cpus", "2",
                             *resources, "--temp-dir", temp_dir, "--block", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours, namespace = os.readlink("/proc/self/ns/mnt"), None
    try:
        deadline = time.monotonic() + 30
        while namespace is None and time.monotonic() < deadline and node.poll() is None:
            with contextlib.suppress(OSError):
                entered = os.readlink(f"/proc/{node.pid}/ns/mnt")  # ours until unshare has made its own
                namespace = entered if entered != ours else None
            time.sleep(0.1)
        assert namespace is not None, "the node never entered a mount namespace of its own"
        yield node
    finally:
        # Every process of that node (raylet, workers) is in its mount namespace and in no other.
        for entry in Path("/proc").iterdir():
            if namespace and entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "mnt") == namespace:
                        os.kill(int(entry.name), signal.SIGKILL)
        node.kill()
        node.wait(timeout=30)


def alive_nodes_reach(address: str, count: int, timeout_s: float) -> bool:
    """Whether the Ray cluster at `address` has `count` alive nodes within `timeout_s` (asked from
    a process of its own: this one stays out of Ray)."""
    script = ("import sys, time, ray\n"
              "ray.init(address=sys.argv[1], log_to_driver=False)\n"
              "deadline = time.monotonic() + float(sys.argv[3])\n"
              "while sum(node['Alive'] for node in ray.nodes()) < int(sys.argv[2]):\n"
              "    if time.monotonic() > deadline:\n"
              "        sys.exit(1)\n"
              "    time.sleep(0.5)\n")
    return subprocess.run([sys.executable, "-c", script, address, str(count), str(timeout_s)],
                          capture_output=True, timeout=timeout_s + 120).returncode == 0


NEEDS_MOUNT_NAMESPACES = pytest.mark.skipif(
    not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0,
    reason="needs mount namespaces (root, util-linux's unshare) to hide a folder from one node")


@NEEDS_MOUNT_NAMESPACES
@pytest.mark.parametrize("hidden", ["tokenizer", "storage"])
def test_a_node_that_lacks_a_file_trials_need_is_named_before_any_trial(tmp_path, llama_server, smollm2, tokenizer,
                                                                        hidden):
    """One node does not see the tokenizer folder, or the results folder that is the run's storage."""
    shared = tmp_path / "shared"
    shutil.copytree(tokenizer, shared / "tokenizer")
    (tmp_path / "results").mkdir()
    folder, expected = {
        "tokenizer": (shared, rf"the tokenizer {shared / 'tokenizer'} is not there: .*"),
        "storage": (tmp_path / "results", rf"storage: {tmp_path / 'results' / 'hidden'} is not the same storage there "
                                          r"as on the driver .*")}[hidden]
    with own_cluster(gpu_nodes=0) as (cluster, _, temp_dir):
        with node_that_cannot_see(folder, cluster.address, temp_dir):
            assert alive_nodes_reach(cluster.address, 2, timeout_s=120), "the second node never joined"
            served = f"hidden-{uuid.uuid4().hex[:8]}"
            task = {"name": "hidden", "model": {"path": smollm2, "name": served, "tokenizer": str(shared / "tokenizer")},
                    "engine": {"name": "llama.cpp", "binary": llama_server},
                    "search_space": {"parallel": [1, 2]},
                    "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [1], "max_requests_per_stage": 4},
                    "search": {"algorithm": "random", "num_samples": 2, "confirm_top_k": 0},
                    "results_dir": str(tmp_path / "results")}
            completed = run(task, tmp_path / "task.yaml", cluster.address)
        assert completed.returncode == 2, completed.stdout[-3000:] + completed.stderr[-3000:]
        assert "Traceback" not in completed.stderr
        [line] = [line for line in completed.stderr.splitlines() if line.startswith("autotuner: error:")]
        assert re.fullmatch(rf"autotuner: error: node \S+ \([0-9a-f]{{8}}\): {expected}", line), line
        assert "trial 1" not in completed.stdout
        assert engine_processes(served) == set()


@NEEDS_MOUNT_NAMESPACES
def test_a_node_that_joins_during_the_run_is_checked_by_its_first_trial(tmp_path, llama_server, smollm2, tokenizer):
    """A node joins mid-run (an autoscaler's new node, a replaced one) without the tokenizer: it was
    not there for the check before the first trial, so the first trial placed on it checks it,
    and the run stops naming it, instead of failing config after config on it."""
    shared = tmp_path / "shared"
    shutil.copytree(tokenizer, shared / "tokenizer")
    with own_cluster(gpu_nodes=1) as (cluster, [first_gpu_node], temp_dir):
        served = f"late-{uuid.uuid4().hex[:8]}"
        binary = launcher(tmp_path / "vllm", llama_server, tmp_path / "engines.jsonl")
        task = vllm_task(tmp_path, str(shared / "tokenizer"), smollm2, binary, served, {"tensor-parallel-size": [4]},
                         num_samples=2, baseline=False)
        task["benchmark"] |= {"concurrency": [1, 2, 4], "max_requests_per_stage": 24}  # long enough to be cut
        path = tmp_path / "task.yaml"
        path.write_text(yaml.safe_dump(task))
        with Driver(path, "--address", cluster.address) as driver:
            driver.read_until("trial 1: stage 1/3", timeout_s=400)
            with node_that_cannot_see(shared, cluster.address, temp_dir, "--num-gpus", str(GPUS_PER_NODE)):
                assert alive_nodes_reach(cluster.address, 3, timeout_s=120), "the new node never joined"
                # The only other node that holds a 4-GPU trial goes: Ray runs trial 1 again on the new one.
                cluster.remove_node(first_gpu_node, allow_graceful=False)
                output = driver.finish(timeout_s=300)
        assert driver.process.returncode == 2, output[-4000:]
        assert "Traceback" not in output, output[-4000:]
        [reason] = [line for line in output.splitlines() if line.startswith("autotuner: stopped")]
        assert re.fullmatch(rf"autotuner: stopped: node \S+ \([0-9a-f]{{8}}\), which joined the cluster during the "
                            rf"run: the tokenizer {shared / 'tokenizer'} is not there: .*", reason), reason
        assert engine_processes(served) == set()
