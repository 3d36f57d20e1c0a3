"""Every Ray node that may run a trial proves its own engine binary before the first trial.

Nodes of one cluster can have different CPUs while sharing one home directory (one cache), so a
binary that serves on the driver's machine proves nothing about the others. A Ray task pinned to
each node runs the same setup there (find or build, then serve one completion) and returns the
path of the binary that node's trials must use.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from llm_autotuner.errors import SetupError

NODE_SETUP_TIMEOUT_S = 7200  # a node without a cached binary builds one (5-20 minutes on 2 cores)


@ray.remote(num_cpus=0, max_retries=0)
def _prepare_node(task_binary: str | None) -> tuple[str, list[str]]:
    from llm_autotuner.cluster.llamacpp_setup import ensure_llama_server

    lines: list[str] = []
    return str(ensure_llama_server(task_binary, progress=lines.append)), lines


def prepare_nodes(task_binary: str | None, skip: set[str] = frozenset(), progress=print) -> dict[str, str]:
    """node id -> the llama-server that served a completion on that node, for every alive node
    but those in `skip` (the driver's own, already checked). Raises SetupError naming the node."""
    nodes = [node for node in ray.nodes() if node["Alive"] and node["NodeID"] not in skip]
    pending = {node["NodeID"]: _prepare_node.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(task_binary)
        for node in nodes}
    names = {node["NodeID"]: f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in nodes}
    binaries = {}
    try:
        for node_id, ref in pending.items():
            try:
                binaries[node_id], lines = ray.get(ref, timeout=NODE_SETUP_TIMEOUT_S)
            except ray.exceptions.RayTaskError as error:
                cause = error.cause if isinstance(error.cause, Exception) else error
                raise SetupError(f"node {names[node_id]}: {cause}") from None
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as error:
                raise SetupError(f"node {names[node_id]}: the engine check did not finish "
                                 f"({type(error).__name__})") from None
            for line in lines:
                progress(f"[node {names[node_id]}] {line}")
    finally:
        for node_id, ref in pending.items():
            if node_id not in binaries:
                ray.cancel(ref, force=True)  # no check left running after the run gave up
    return binaries
