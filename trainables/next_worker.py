"""A worker process made ready for the next trial's actor while this trial runs.

Each trial runs in an actor of its own, in a new process (trial.py, TrialTrainable says why). Ray
starts that process only once the trial is placed, and the process then imports Ray Tune and this
package: between two trials of one slot that took ~1.1 s of a 7-s trial on a 2-core machine
(docs/benchmarks.md, Parallel efficiency). So each trial, as it starts, asks its node's raylet for
one more worker of the run (the raylet's PrestartWorkers call, with the run's job and runtime
environment), which the next actor placed there takes; and the local Ray the driver starts has
every worker import the trial's module as it starts (PRELOAD). Measured (a bare actor, 8 in turn):
0.04 s from creating the actor to its first answer, against 1.10 s. On a cluster started
elsewhere the ready worker still saves the process start; the preload is its own
(`ray start --head --system-config`).
"""

from __future__ import annotations

import grpc
import ray
from ray._private.grpc_utils import init_grpc_channel
from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

TRIAL_MODULE = "llm_autotuner.trainables.trial"
# For the local Ray: each worker imports the trial's module as it starts. Ray's own start of one
# worker per CPU is off: with the preload, a 64-CPU machine would start 64 processes importing
# Ray Tune; the trials start the workers they need instead.
PRELOAD = {"preload_python_modules": [TRIAL_MODULE], "prestart_worker_first_driver": False}

# How long the raylet keeps the worker from its reaper of idle workers (which takes only those
# beyond the node's CPU count); the run's end (its job's) ends it in any case.
KEEP_ALIVE_S = 3600
CALL_TIMEOUT_S = 5.0


def ready_next_worker() -> str | None:
    """Ask this node's raylet to start one worker for the run's next trial here; never fails the
    trial (without it the next actor starts its own process). Returns why it could not, or None."""
    worker = ray._private.worker.global_worker
    try:
        node = worker.node
        request = node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.PYTHON, job_id=worker.current_job_id.binary(), num_workers=1,
            keep_alive_duration_secs=KEEP_ALIVE_S)
        # This trial's own runtime environment, which the next trial's actor has too: the run's,
        # with the environment variables Ray Tune gives every trainable (tune/execution/class_cache.py).
        # The raylet gives a ready worker only to a task whose environment is the same, to the byte.
        request.runtime_env_info.serialized_runtime_env = worker.core_worker.get_current_runtime_env()
        request.runtime_env_info.runtime_env_config.CopyFrom(
            worker.core_worker.get_job_config().runtime_env_info.runtime_env_config)
        with init_grpc_channel(f"{node.node_ip_address}:{node.node_manager_port}") as channel:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=CALL_TIMEOUT_S)
    except (grpc.RpcError, AttributeError, ValueError) as error:
        return " ".join(str(error).split())[:200]
    return None
