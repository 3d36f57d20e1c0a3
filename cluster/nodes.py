"""Checks that run on every Ray node that may run a trial, before the first trial (a node that
joins the cluster later is checked by each trial placed there: trainables/trial.py).

Nodes of one cluster can have different CPUs while sharing one home directory (one cache), so a
binary that serves on the driver's machine proves nothing about the others; and a node may lack
the engine or genai-bench altogether. A Ray task pinned to each node runs the check there; a
failure names the node.
"""

from __future__ import annotations

from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from llm_autotuner.cluster.node_check import NodeCheck
from llm_autotuner.errors import SetupError

NODE_SETUP_TIMEOUT_S = 7200  # a node without a cached binary builds one (5-20 minutes on 2 cores)
NODE_CHECK_TIMEOUT_S = 300  # finding a program and a module: no build


# Run again once if Ray loses its worker (seen on a loaded machine: WorkerCrashedError before the
# check began): a check is idempotent, and a build resumes from its cache.
@ray.remote(num_cpus=0, max_retries=1)
def _check_node(check: NodeCheck) -> tuple[str | None, list[str]]:
    lines: list[str] = []
    return check.run_here(lines.append), lines


def check_nodes(check: NodeCheck, skip: set[str] = frozenset(), progress=print) -> dict[str, str | None]:
    """Run `check` on every alive node but those in `skip` (the driver's own, already checked):
    node id -> the llama-server proven there (None when none is proven). Raises SetupError naming
    the first node that fails it."""
    timeout_s = NODE_SETUP_TIMEOUT_S if check.prove_llama_server else NODE_CHECK_TIMEOUT_S
    return _on_every_node(_check_node, (check,), skip, timeout_s, progress)


def everywhere(function: Callable[..., list], *args: Any, timeout_s: float = NODE_CHECK_TIMEOUT_S) -> list:
    """`function(*args)` (which returns a list) on every alive Ray node, the lists joined; only here
    without a Ray cluster. For what each node keeps to itself, such as its engine records."""
    if not ray.is_initialized() or sum(node["Alive"] for node in ray.nodes()) < 2:
        return function(*args)
    remote = ray.remote(num_cpus=0, max_retries=1)(lambda *a: (function(*a), []))  # a sweep may run twice
    try:
        values = _on_every_node(remote, args, set(), timeout_s, print)
    except SetupError as error:  # a node that does not answer must not fail a run that worked
        print(f"[autotuner] warning: {error}; that node's leftovers were not swept")
        return function(*args)  # this node's at least (a second sweep of it finds nothing more)
    return [item for node_items in values.values() for item in node_items]


def _on_every_node(check: Any, args: tuple, skip: set[str], timeout_s: float,
                   progress: Callable[[str], None]) -> dict[str, Any]:
    """Run the remote `check(*args) -> (value, lines)` once on each alive node; node id -> value."""
    nodes = [node for node in ray.nodes() if node["Alive"] and node["NodeID"] not in skip]
    pending = {node["NodeID"]: check.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(*args)
        for node in nodes}
    names = {node["NodeID"]: f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in nodes}
    values = {}
    try:
        for node_id, ref in pending.items():
            try:
                values[node_id], lines = ray.get(ref, timeout=timeout_s)
            except ray.exceptions.RayTaskError as error:
                cause = error.cause if isinstance(error.cause, Exception) else error
                raise SetupError(f"node {names[node_id]}: {cause}") from None
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as error:
                raise SetupError(f"node {names[node_id]}: the check did not finish "
                                 f"({type(error).__name__})") from None
            for line in lines:
                progress(f"[node {names[node_id]}] {line}")
    finally:
        unfinished = [ref for node_id, ref in pending.items() if node_id not in values]
        _, running = ray.wait(unfinished, num_returns=len(unfinished), timeout=0) if unfinished else ([], [])
        for ref in running:  # no check left running after the run gave up (a finished one's worker is left be)
            ray.cancel(ref, force=True)
    return values
