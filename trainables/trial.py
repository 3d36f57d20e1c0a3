"""One trial: deploy its engine, wait until ready, benchmark stage by stage, report, tear down.

Each stage's metrics are one result of the class trainable below, so ASHA can stop the trial
between stages; every process it starts runs under a watchdog (cluster/procs.py) that kills it
should the trial's worker die before its teardown.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
from ray import tune

from llm_autotuner.cluster.backend import backend_for, shortfall, trial_claim
from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import profile_for
from llm_autotuner.cluster.flag_rules import conflict
from llm_autotuner.cluster.node_check import NodeCheck
from llm_autotuner.cluster.storage import Storage, TrialFolder
from llm_autotuner.trainables.genai_bench import GenaiBenchRunner
from llm_autotuner.trainables.next_worker import ready_next_worker
from llm_autotuner.errors import AutotunerError, DeploymentError, InfrastructureError, SetupError
from llm_autotuner.objective import INFEASIBLE_SCORE, request_limits, score_stages, weighted_mean, worst_value
from llm_autotuner.outcome import Outcome, creation_number, packed_metrics, trial_label, trial_params
from llm_autotuner.task import Task

IMPORTED_AT = time.time()  # in a worker Ray made ready, before its trial was placed (next_worker.py)


@dataclass(frozen=True)
class Resolved:
    """What the driver resolved once for all trials: binaries, model and tokenizer paths."""

    executable: str
    model_path: str
    served_name: str
    tokenizer: str
    storage: Storage  # where each trial's folder (logs, genai-bench's files, timeline) goes
    run_id: str  # this run of the experiment: labels, records and cleanup use it
    # Ray node id -> the engine binary proven on that node (a node's cache may hold another build).
    node_executables: dict[str, str] = field(default_factory=dict)
    # What each node must have (cluster/node_check.py), and the nodes checked before the first
    # trial: a trial on any other node (one that joined later) runs the check there first.
    node_check: NodeCheck | None = None
    checked_nodes: frozenset[str] = frozenset()
    run_host: str = ""  # the driver's host (cluster/records.py:host_id)
    # The Ray cluster as the run found it: the most CPUs of a node, and each node's resources.
    node_cpus: int = 0
    nodes: tuple[dict[str, float], ...] = ()
    # The earlier run's folder in a storage elsewhere, moved aside as this run started: where its
    # trials' files left on the nodes go (cluster/storage.py: collect_here).
    earlier_storage: str | None = None

    def executable_here(self) -> str:
        """The binary for the node this code runs on."""
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return self.node_executables.get(node, self.executable)


# What tells CUDA (and ROCm) programs which GPUs they may use.
GPU_LIST_VARIABLES = frozenset({"CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"})


def engine_spec(task: Task, resolved: Resolved, params: dict[str, Any], trial_id: str,
                workdir: Path) -> EngineSpec:
    profile = profile_for(task.engine.name)
    return EngineSpec(experiment=task.name, run_id=resolved.run_id, trial_id=trial_id, profile=profile,
                      executable=resolved.executable_here(), model_path=resolved.model_path,
                      served_name=resolved.served_name, flags=profile.merged(task.engine.args, params),
                      workdir=workdir, env=dict(task.engine.env) | assigned_gpus(task), run_host=resolved.run_host)


def assigned_gpus(task: Task) -> dict[str, str]:
    """The GPUs Ray assigned to this trial, for an engine started on its node: exactly those, none
    if none (Ray 2.60 leaves a worker without GPUs the whole machine's), so that two engines never
    share a GPU. Engines a backend runs elsewhere (a Kubernetes pod) get their GPUs there."""
    import ray

    if not (ray.is_initialized() and backend_for(task.deployment).gpus_from_ray):
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in sorted(ray.get_gpu_ids()))}


def make_runner(task: Task, resolved: Resolved, api_backend: str):
    if task.benchmark.runner == "benchmarkjob":
        from llm_autotuner.trainables.benchmark_job import BenchmarkJobRunner

        return BenchmarkJobRunner(task, resolved.run_id, api_backend)
    return GenaiBenchRunner(task.benchmark, resolved.tokenizer, api_backend, request_limits(task.limits))


class Timeline:
    """Wall-clock marks of a trial's phases, kept in its folder (timeline.json): where time goes."""

    def __init__(self, path: Path):
        self.path = path
        self.marks: dict[str, float] = {}

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks[name] = time.time() if at is None else at
        self.path.write_text(json.dumps(self.marks))


class TrialTrainable(tune.Trainable):
    """One trial as a class trainable: one benchmark stage per `step`, the engine torn down
    synchronously in `cleanup`, which Ray calls however the trial ends (its last stage, an ASHA
    stop, the run stopping).

    Why a class and a new actor per trial (no actor reuse): Ray frees a trial's resources only
    once its actor has stopped, and runs `cleanup` to the end before that (up to
    TUNE_FORCE_TRIAL_CLEANUP_S, 600 s), so a teardown of any length (a GPU engine freeing its
    memory, an InferenceService waiting out its pods' grace period) finishes before the next trial
    can claim what this one held: no two engines on one resource. A function trainable's `finally`
    is cut off 0.1 s after an ASHA stop, and reusing its actor while it tears down hangs Ray 2.60
    (see docs/benchmarks.md for what the new actor per trial costs).
    """

    def setup(self, config: dict[str, Any], task: Task, resolved: Resolved) -> None:
        self.task, self.resolved, self.params = task, resolved, trial_params(config)
        # Ray runs a trial in <experiment>/working_dirs/<trial folder> (ray.train StorageContext).
        working_dir = Path(self.logdir)
        self.label = trial_label(task.name, working_dir.parent.parent.name,
                                 creation_number(working_dir.name, self.trial_id), config)
        import ray

        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self.folder = TrialFolder(resolved.storage, self.trial_id, self.node, resolved.run_id)
        self.workdir = self.folder.path
        self.timeline = Timeline(self.workdir / "timeline.json")
        # When the actor's process started (to within a second: the kernel's boot time is whole
        # seconds) and had this module, against the previous trial's end: whether it was made
        # ready for this trial (next_worker.py).
        self.timeline.mark("process_start", psutil.Process().create_time())
        self.timeline.mark("trial_module_imported", IMPORTED_AT)
        self.timeline.mark("trial_start")
        not_ready = ready_next_worker() if ray.is_initialized() else None
        if not_ready:  # only slower: the next trial's actor starts its own process
            print(f"[autotuner] no worker made ready for the next trial: {not_ready}", flush=True)
        self.spec = engine_spec(task, resolved, self.params, self.trial_id, self.workdir)
        self.runner = make_runner(task, resolved, task.benchmark.api_backend or self.spec.profile.api_backend)
        self.gpus = int(self.spec.profile.resources(self.spec.flags).get("GPU", 0))  # 0: per-GPU = per server
        self.measured: list[dict] = []
        self.running = contextlib.ExitStack()  # genai-bench, the engine, the stages: closed in reverse
        self.endpoint = None
        self.stages: Iterator | None = None

    def __repr__(self) -> str:
        # Ray shows an actor's own repr as its name in the dashboard (actors, tasks, log prefixes):
        # the trial is found there by its task, number and config instead of a class name.
        return getattr(self, "label", type(self).__name__)

    def step(self) -> dict:
        # The engine is not torn down here when the trial ends: Ray calls `cleanup` (below) before
        # it frees the trial's resources, and a result returned first reaches the searcher (and
        # survives a Ctrl-C that comes during the teardown).
        try:
            result = self._next_stage()
        except RunStopped:
            self._teardown()  # now, within the seconds Ray gives a stopping trial
            self.timeline.mark("stopped")  # the engine gone (if it was still starting: `deployed` tore it down)
            result = interrupted(len(self.measured))
        except AutotunerError as error:
            result = self._failure(error)
        # Which attempt's folder holds this trial's files (cluster/storage.py: assemble), and the
        # engine's build it ran (on a cluster, each node's own): best_command.txt names that one.
        return result | {"files": self.folder.key, "node": self.node, "executable": self.spec.executable}

    def _next_stage(self) -> dict:
        task = self.task
        if self.stages is None:
            if stop_requested(self.resolved.storage):
                # Ray was starting this trial as the run was stopped: deploy nothing.
                return interrupted(0)
            too_big = self.resolved.nodes and shortfall(
                trial_claim(task, self.params, self.resolved.node_cpus), list(self.resolved.nodes))
            # Too big: placed with next to nothing (tuner/driver.py). Either way skipped, the searcher told why.
            refused = too_big or conflict(task.engine.name, self.spec.flags)
            if refused:
                return {"stage": 0, "score": INFEASIBLE_SCORE, "objective": None, "violation": f"the config {refused}",
                        "objectives": {m: worst_value(m) for m in task.objective.metrics}, "slos_met": False,
                        "error": None, "metrics": None, "outcome": Outcome.INFEASIBLE.value, "done": True}
            self._check_late_node()
            stop_watch = StopWatch(self.resolved.storage)
            self.running.enter_context(self.runner.started_early(self.workdir))  # overlaps the engine's start
            self.endpoint = self.running.enter_context(backend_for(task.deployment).deployer().deployed(
                self.spec, task.deployment.ready_timeout_s, stop_watch.check))
            self.timeline.mark("engine_ready")
            watched = replace(self.endpoint, failure=stop_watch.around(self.endpoint.failure))
            self.stages = iter(self.running.enter_context(
                self.runner.run(watched, self.resolved.served_name, self.workdir)))
        stage, metrics = next(self.stages)
        crashed = self.endpoint.failure()
        if crashed:  # the stage's numbers may hold the crash: not reported
            raise DeploymentError(crashed)
        self.timeline.mark(f"stage_{stage.index}_done")
        self.folder.sync([self.timeline.path.name])  # where the run stands, seen from the storage
        metrics["output_throughput_per_gpu"] = metrics["output_throughput"] / max(1, self.gpus)
        self.measured.append(metrics)
        weights = task.benchmark.stage_weights
        score = score_stages(self.measured, task.objective.metric, task.limits, weights)
        # Each objective on its own, for a multi-objective searcher (worst once infeasible).
        objectives = {m: weighted_mean(self.measured, m, weights) if score.feasible else worst_value(m)
                      for m in task.objective.metrics}
        # An SLO broken at this load only gets worse at higher loads: the trial ends here.
        outcome = (Outcome.INFEASIBLE if not score.feasible
                   else Outcome.COMPLETED if stage.index == len(task.benchmark.concurrency) else None)
        return {"stage": stage.index, "score": score.score, "objective": score.value, "objectives": objectives,
                "violation": score.violation, "slos_met": score.slos_met, "error": None,
                "metrics": packed_metrics(metrics),
                "measured_via": self.endpoint.via, "outcome": outcome and outcome.value, "done": outcome is not None}

    def _check_late_node(self) -> None:
        """A node that joined the cluster after the run started was not checked with the others:
        each trial placed there checks it (and proves its engine binary) before deploying."""
        check = self.resolved.node_check
        if check is None or not self.node or self.node in self.resolved.checked_nodes:
            return
        import ray

        try:
            proven = check.run_here()
        except SetupError as error:
            raise SetupError(f"node {ray.util.get_node_ip_address()} ({self.node[:8]}), which joined the cluster "
                             f"during the run: {error}") from None
        if proven:  # for this trial's engine, and its control start should it fail
            self.resolved = replace(self.resolved, node_executables=self.resolved.node_executables | {self.node: proven})
            self.spec = replace(self.spec, executable=proven)

    def _failure(self, error: AutotunerError) -> dict:
        self._teardown()  # the failed engine first: the control start below needs its resources
        setup_failure = None
        if isinstance(error, SetupError):  # what every trial on that node needs: no config avoids it
            setup_failure = str(error)
        elif isinstance(error, InfrastructureError):
            setup_failure = f"the cluster refused what every trial needs: {str(error).splitlines()[0]}"
        elif isinstance(error, DeploymentError) and self.stages is None and not stop_requested(self.resolved.storage):
            # (After a stop no control engine is started: the failure may be the stop's own kill.)
            setup_failure = failure_without_tuned_flags(self.task, self.resolved, self.params, str(error),
                                                        self.workdir)
        # Reported, not raised: the searcher then learns this config is bad, and the search goes on
        # (unless the setup itself is broken: then the driver stops the run).
        return {"stage": len(self.measured), "score": INFEASIBLE_SCORE, "objective": None,
                "objectives": {m: worst_value(m) for m in self.task.objective.metrics}, "violation": None,
                "slos_met": None, "error": f"{type(error).__name__}: {error}", "metrics": None,
                "setup_failure": setup_failure, "done": True,
                # Not the config's failure: a --resume once the cluster is fixed runs it again.
                "outcome": (Outcome.FAILED_INFRASTRUCTURE if isinstance(error, (InfrastructureError, SetupError))
                            else Outcome.FAILED).value}

    def _teardown(self) -> None:
        # genai-bench killed, then the engine torn down and waited for; also when the engine never
        # came up (genai-bench, started with it, waits for arguments that will not come). Closing
        # an emptied stack again does nothing.
        self.running.close()
        if self.endpoint is not None or self.stages is not None:
            self.timeline.mark("engine_gone")
            self.endpoint = self.stages = None

    def cleanup(self) -> None:
        try:
            self._teardown()
            self.timeline.mark("trial_end")
        finally:
            self.folder.close()  # after the teardown: the engine's log is complete


def interrupted(stage: int) -> dict:
    """The report of a trial the run's stop cut short: neither for nor against its config."""
    return {"stage": stage, "score": INFEASIBLE_SCORE, "outcome": Outcome.INTERRUPTED.value, "done": True}


STOP_LOOK_S = 1.0  # how often a trial's waits look for the run's stop (a file, or an object store read)


class RunStopped(Exception):
    """The run was stopped (a signal, its time budget, patience, the failure guard: RunEnd in
    tuner/interrupt.py) while this trial waited on its engine or benchmark."""


class StopWatch:
    """Raises RunStopped from a trial's waits once the run's stop is seen (looked for at most every
    STOP_LOOK_S). Ray asks a stopped trial to end only when its current step returns (an engine
    loading a model, a warm-up, a stage: minutes), and gives a stopping trial 10 s at the run's
    end: without this the teardown would be cut short, left to the watchdogs and the driver's sweep."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.next_look = 0.0

    def check(self) -> None:
        if time.monotonic() >= self.next_look:
            self.next_look = time.monotonic() + STOP_LOOK_S
            if stop_requested(self.storage):
                raise RunStopped

    def around(self, failure: Callable[[], str | None]) -> Callable[[], str | None]:
        """`failure` (why the engine stopped serving), checking for the stop first."""
        def checked() -> str | None:
            self.check()
            return failure()

        return checked


def stop_requested(storage: Storage) -> bool:
    try:
        return storage.stop_requested()
    except OSError:  # the storage did not answer: Ray's own stop still reaches the trial
        return False


def failure_without_tuned_flags(task: Task, resolved: Resolved, params: dict[str, Any], error: str,
                                workdir: Path) -> str | None:
    """Whether an engine that failed before it was ready fails without this trial's flags too.

    If it does (a binary that dies at start, an unreadable model, a bad fixed flag), no config can
    avoid the failure: return one line saying so, and the driver stops the run rather than feed
    one failure after another to the searcher. If the engine starts with only the task's fixed
    flags, this config is to blame: None. Only where the backend finds a control start cheap.
    """
    first_line = error.splitlines()[0]
    backend = backend_for(task.deployment)
    if not backend.control_start:
        return None
    if not any(value is not None for value in params.values()):
        # This trial ran the engine's defaults with the fixed flags: it was the control.
        return f"the engine fails at start with no tuned flags (engine.args only): {first_line}"
    control = engine_spec(task, resolved, {}, f"{workdir.name}-control", workdir / "control")
    try:
        with backend.deployer().deployed(control, task.deployment.ready_timeout_s):
            return None
    except DeploymentError as control_error:
        return (f"the engine fails at start whatever its tuned flags (also with engine.args only): "
                f"{str(control_error).splitlines()[0]}")
