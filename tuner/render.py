"""Dry run: what N sampled trials would deploy, as files, without contacting any cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llm_autotuner.cluster.backend import backend_for, trial_claim
from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import profile_for
from llm_autotuner.tuner.space import sample
from llm_autotuner.task import Task

RENDER_RUN_ID = "render"


def winner_files(task: Task, served_name: str, executable: str, model_path: str,
                 parameters: dict[str, Any]) -> dict[str, str]:
    """What deploys the winning config for good, beyond its launch line (OME: an InferenceService)."""
    profile = profile_for(task.engine.name)
    spec = EngineSpec(experiment=task.name, run_id="", trial_id="best", profile=profile, executable=executable,
                      model_path=model_path, served_name=served_name,
                      flags=profile.merged(task.engine.args, parameters), workdir=Path("."), env=dict(task.engine.env))
    return backend_for(task.deployment).export(spec)


def render_trials(task: Task, trials: int) -> dict[str, str]:
    """File name -> content: per trial what its backend would deploy (a manifest on OME, a launch
    line locally) and, with the BenchmarkJob runner, its job; and `claims.json`, what each trial
    would hold in Ray (engine and load generator) on a node with this machine's CPUs."""
    profile = profile_for(task.engine.name)
    executable, model_path = profile.launch_paths(task.model, task.engine)
    samples = [sample(task.search_space) for _ in range(trials)]
    specs = [EngineSpec(experiment=task.name, run_id=RENDER_RUN_ID, trial_id=f"trial{number}", profile=profile,
                        executable=executable, model_path=model_path, served_name=task.model.name or "model",
                        flags=profile.merged(task.engine.args, params), workdir=Path("."), env=dict(task.engine.env))
             for number, params in enumerate(samples, 1)]
    files = backend_for(task.deployment).render(specs)
    node_cpus = os.cpu_count() or 1
    files["claims.json"] = json.dumps({f"trial-{number}": trial_claim(task, params, node_cpus)
                                       for number, params in enumerate(samples, 1)}, indent=2) + "\n"
    if task.benchmark.runner == "benchmarkjob":
        from llm_autotuner.trainables.benchmark_job import BenchmarkJobRunner

        runner = BenchmarkJobRunner(task, RENDER_RUN_ID, profile.api_backend)
        for number, spec in enumerate(specs, 1):
            files[f"trial-{number}-benchmarkjob.yaml"] = runner.render(spec)
    return files
