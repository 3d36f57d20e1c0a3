"""One trial: deploy its engine, wait until ready, benchmark stage by stage, report, tear down.

After every stage the trial calls `tune.report`; when ASHA stops the trial, that call raises
SystemExit, and the `with` blocks below kill genai-bench and the engine on the way out (their
first step is a signal, before any wait: Ray ends the worker about 0.1 s later, and the
watchdogs finish the job if it does).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from cluster.deployer import Deployer, EngineSpec
from cluster.engines import PROFILES
from cluster.local import LocalDeployer
from trainables.genai_bench import GenaiBenchRunner
from tuner.errors import AutotunerError, DeploymentError
from tuner.objective import INFEASIBLE_SCORE, request_limits, score_stages, weighted_mean, worst_value
from tuner.task import OmeDeployment, Task

# Config key marking the baseline trial (engine defaults). No flag name can start with '_'.
BASELINE_KEY = "__baseline__"


@dataclass(frozen=True)
class Resolved:
    """What the driver resolved once for all trials: binaries, model and tokenizer paths."""

    executable: str
    model_path: str
    served_name: str
    tokenizer: str
    trials_dir: str  # results/<task>/trials: one folder per trial with its logs and timeline
    run_id: str  # this run of the experiment: labels, records and cleanup use it
    # Ray node id -> the engine binary proven on that node (a node's cache may hold another build).
    node_executables: dict[str, str] = field(default_factory=dict)

    def executable_here(self) -> str:
        """The binary for the node this code runs on."""
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return self.node_executables.get(node, self.executable)


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The engine parameters of a trial config (None = leave the engine's default)."""
    return {key: value for key, value in config.items() if key != BASELINE_KEY}


def engine_spec(task: Task, resolved: Resolved, params: dict[str, Any], trial_id: str,
                workdir: Path) -> EngineSpec:
    profile = PROFILES[task.engine.name]
    return EngineSpec(experiment=task.name, run_id=resolved.run_id, trial_id=trial_id, profile=profile,
                      executable=resolved.executable_here(), model_path=resolved.model_path,
                      served_name=resolved.served_name, flags=profile.merged(task.engine.args, params),
                      workdir=workdir, env=dict(task.engine.env))


def make_deployer(task: Task) -> Deployer:
    if isinstance(task.deployment, OmeDeployment):
        from cluster.ome import OmeDeployer  # the kubernetes client is only needed here

        return OmeDeployer(task.deployment)
    return LocalDeployer()


def make_runner(task: Task, resolved: Resolved, api_backend: str):
    if task.benchmark.runner == "benchmarkjob":
        from trainables.benchmark_job import BenchmarkJobRunner

        return BenchmarkJobRunner(task, resolved, api_backend)
    return GenaiBenchRunner(task.benchmark, resolved.tokenizer, api_backend, request_limits(task.limits))


class Timeline:
    """Wall-clock marks of a trial's phases, kept in its folder (timeline.json): where time goes."""

    def __init__(self, path: Path):
        self.path = path
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()
        self.path.write_text(json.dumps(self.marks))


def run_trial(config: dict[str, Any], task: Task, resolved: Resolved) -> None:
    """The Ray Tune function trainable."""
    context = tune.get_context()
    # Our own folder per trial, not Ray's trial dir: with reused actors, Ray 2.60 hands later trials
    # a staging dir that is never synced to the results (measured), and their logs would be lost.
    workdir = Path(resolved.trials_dir) / context.get_trial_id()
    workdir.mkdir(parents=True, exist_ok=True)
    timeline = Timeline(workdir / "timeline.json")
    timeline.mark("trial_start")
    spec = engine_spec(task, resolved, trial_params(config), context.get_trial_id(), workdir)
    runner = make_runner(task, resolved, task.benchmark.api_backend or spec.profile.api_backend)
    measured: list[dict] = []
    gpus = int(spec.profile.resources(spec.flags).get("GPU", 0))  # 0 on the CPU: per-GPU = per server
    ready = False
    try:
        with make_deployer(task).deployed(spec, task.deployment.ready_timeout_s) as endpoint:
            ready = True
            timeline.mark("engine_ready")
            with runner.run(endpoint, resolved.served_name, workdir) as results:
                for stage, metrics in results:
                    crashed = endpoint.failure()
                    if crashed:  # the stage's numbers may hold the crash: not reported
                        raise DeploymentError(crashed)
                    timeline.mark(f"stage_{stage.index}_done")
                    metrics["output_throughput_per_gpu"] = metrics["output_throughput"] / max(1, gpus)
                    measured.append(metrics)
                    weights = task.benchmark.stage_weights
                    score = score_stages(measured, task.objective.metric, task.limits, weights)
                    # Each objective on its own, for a multi-objective searcher (worst once infeasible).
                    objectives = {m: weighted_mean(measured, m, weights) if score.feasible else worst_value(m)
                                  for m in task.objective.metrics}
                    tune.report({"stage": stage.index, "score": score.score, "objective": score.value,
                                 "objectives": objectives, "violation": score.violation,
                                 "slos_met": score.slos_met, "error": None, "metrics": metrics})
                    if not score.feasible:
                        return  # an SLO broken at this load only gets worse at higher loads
    except AutotunerError as error:
        setup_failure = None
        if isinstance(error, DeploymentError) and not ready:
            setup_failure = failure_without_tuned_flags(task, resolved, config, str(error), workdir)
        # Reported, not raised: the searcher then learns this config is bad, and the search goes on
        # (unless the setup itself is broken: then the driver stops the run).
        tune.report({"stage": len(measured), "score": INFEASIBLE_SCORE, "objective": None,
                     "objectives": {m: worst_value(m) for m in task.objective.metrics}, "violation": None,
                     "slos_met": None, "error": f"{type(error).__name__}: {error}", "metrics": None,
                     "setup_failure": setup_failure})
    finally:
        timeline.mark("trial_end")


def failure_without_tuned_flags(task: Task, resolved: Resolved, config: dict[str, Any], error: str,
                                workdir: Path) -> str | None:
    """Whether an engine that failed before it was ready fails without this trial's flags too.

    If it does (a binary that dies at start, an unreadable model, a bad fixed flag), no config can
    avoid the failure: return one line saying so, and the driver stops the run rather than feed
    one failure after another to the searcher. If the engine starts with only the task's fixed
    flags, this config is to blame: None. Local engines only: a control start on Kubernetes is a
    whole InferenceService, and its failures of that kind are API errors.
    """
    first_line = error.splitlines()[0]
    if isinstance(task.deployment, OmeDeployment):
        return None
    if not any(value is not None for value in trial_params(config).values()):
        # This trial ran the engine's defaults with the fixed flags: it was the control.
        return f"the engine fails at start with no tuned flags (engine.args only): {first_line}"
    control = engine_spec(task, resolved, {}, f"{workdir.name}-control", workdir / "control")
    try:
        with LocalDeployer().deployed(control, task.deployment.ready_timeout_s):
            return None
    except DeploymentError as control_error:
        return (f"the engine fails at start whatever its tuned flags (also with engine.args only): "
                f"{str(control_error).splitlines()[0]}")
