"""Dry run: what N sampled trials would deploy, as files, without contacting any cluster."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import PROFILES, Launch, default_executable
from llm_autotuner.tuner.space import sample
from llm_autotuner.task import OmeDeployment, Task

RENDER_RUN_ID = "render"


def render_trials(task: Task, trials: int) -> dict[str, str]:
    """File name -> content: a manifest per trial on OME, a launch line (argv as JSON) locally."""
    from llm_autotuner.cluster import manifests

    profile = PROFILES[task.engine.name]
    files: dict[str, str] = {}
    ome = task.deployment if isinstance(task.deployment, OmeDeployment) else None
    for number in range(1, trials + 1):
        flags = profile.merged(task.engine.args, sample(task.search_space))
        spec = EngineSpec(experiment=task.name, run_id=RENDER_RUN_ID, trial_id=f"trial{number}", profile=profile,
                          executable=task.engine.binary or default_executable(task.engine.name),
                          model_path=task.model.path or "$(MODEL_PATH)", served_name=task.model.name or "model",
                          flags=flags, workdir=Path("."), env=dict(task.engine.env))
        if ome is not None:
            from llm_autotuner.cluster import kube
            from llm_autotuner.cluster.deployer import Endpoint
            from llm_autotuner.cluster.ome import render

            manifest = render(spec, ome)
            files[f"trial-{number}-inferenceservice.yaml"] = manifests.to_yaml(manifest)
            if task.benchmark.runner == "benchmarkjob":
                from llm_autotuner.trainables.benchmark_job import BenchmarkJobRunner
                from llm_autotuner.trainables.trial import Resolved

                url = f"http://{manifest['metadata']['name']}.{ome.namespace}.svc.cluster.local:{ome.port}"
                resolved = Resolved("", spec.model_path, spec.served_name, "", "", RENDER_RUN_ID)
                job = BenchmarkJobRunner(task, resolved, profile.api_backend).manifest(
                    kube.resource_name(task.name, f"{spec.trial_id}-bench", RENDER_RUN_ID), spec.trial_id,
                    Endpoint(url, url), spec.served_name)
                files[f"trial-{number}-benchmarkjob.yaml"] = manifests.to_yaml(job)
        else:
            launch = Launch(spec.executable, spec.model_path, spec.served_name, "127.0.0.1", 8080)
            argv = profile.argv(launch, flags)
            files[f"trial-{number}-launch.json"] = json.dumps(
                {"argv": argv, "command": shlex.join(argv), "claims": profile.resources(flags)}, indent=2) + "\n"
    if ome is not None and ome.create_runtime is not None:
        from llm_autotuner.cluster.ome import runtime_manifest

        files["cluster-serving-runtime.yaml"] = manifests.to_yaml(runtime_manifest(ome, task.model.name))
    return files
