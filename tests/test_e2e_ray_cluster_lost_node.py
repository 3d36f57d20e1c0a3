"""A Ray cluster that loses the only node a trial fits on (`autotuner run --address`, Ray's
multi-node test cluster on this machine): the run stops, saying why, instead of waiting for ever.
A file of its own: its two runs are the longest of the cluster tests, and pytest-xdist runs a file
on one worker."""

import json
import uuid

import pytest
import yaml

from tests.conftest import Driver, engine_processes
from tests.data.gpu_engine_standin import launcher
from tests.ray_clusters import own_cluster, vllm_task

pytestmark = pytest.mark.e2e


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
