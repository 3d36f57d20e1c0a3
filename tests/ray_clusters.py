"""Ray clusters of a test's own on this machine, for the tests that run `autotuner run --address`
(tests/test_e2e_ray_cluster*.py): Ray's multi-node test cluster (separate raylets, fake GPUs), a
node that cannot see a folder (a machine that does not share the driver's files), and the vLLM
task they tune with a stand-in engine (tests/data/gpu_engine_standin.py)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ray.cluster_utils import Cluster

GPUS_PER_NODE = 4


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
