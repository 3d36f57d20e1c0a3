"""Ray nodes that cannot see a file the trials need (`autotuner run --address`, a node in a mount
namespace of its own): named before any trial, or by the first trial placed on a node that joined
during the run."""

import re
import shutil
import uuid

import pytest
import yaml

from tests.conftest import Driver, engine_processes
from tests.data.gpu_engine_standin import launcher
from tests.ray_clusters import (GPUS_PER_NODE, NEEDS_MOUNT_NAMESPACES, alive_nodes_reach, node_that_cannot_see,
                                own_cluster, run, vllm_task)

pytestmark = pytest.mark.e2e


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
