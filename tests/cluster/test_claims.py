"""What a trial holds in Ray, and why a claim fits no node: the words a user reads when a config is
skipped or a whole space is refused."""

from llm_autotuner.cluster.backend import cheapest_params, shortfall, trial_claim
from llm_autotuner.task import parse_task

GPU_NODES = [{"CPU": 2.0}, {"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 4.0}]  # a head without GPUs


def vllm_task(space):
    return parse_task({"name": "c", "model": {"path": "/models/m", "tokenizer": "t"}, "engine": {"name": "vllm"},
                       "search_space": space})


def test_a_vllm_trial_claims_tp_times_dp_gpus_and_the_load_generators_cpu():
    task = vllm_task({"tensor-parallel-size": [2, 4]})
    assert trial_claim(task, {"tensor-parallel-size": 2, "data-parallel-size": 2}, 8) == {"CPU": 2.0, "GPU": 4.0}


def test_a_claim_larger_than_any_node_names_what_is_short():
    assert shortfall({"CPU": 2.0, "GPU": 4.0}, GPU_NODES) is None
    assert shortfall({"CPU": 2.0, "GPU": 8.0}, GPU_NODES) == "needs 8 GPU on one node; the largest Ray node has 4"


def test_a_claim_each_part_of_which_some_node_has_but_none_all():
    nodes = [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 4.0}]
    assert shortfall({"CPU": 2.0, "GPU": 2.0}, nodes) == "needs 2 CPU, 2 GPU on one node; no Ray node has all of that"


def test_the_smallest_config_of_a_space_bounds_what_must_fit():
    task = vllm_task({"tensor-parallel-size": [8, 16], "max-num-seqs": {"type": "int", "min": 64, "max": 256,
                                                                        "step": 64}})
    assert cheapest_params(task) == {"tensor-parallel-size": 8, "max-num-seqs": 64}
    assert shortfall(trial_claim(task, cheapest_params(task), 8), GPU_NODES).startswith("needs 8 GPU")
