"""Dry run: what N sampled trials would deploy, as files, without contacting any cluster."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

from llm_autotuner.cluster.backend import backend_for, beyond_offers, trial_claim
from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import profile_for, served_model_name
from llm_autotuner.cluster.flag_rules import conflict
from llm_autotuner.metrics import counted
from llm_autotuner.tuner.search import distinct_count, effective_of, spelling, untried_config
from llm_autotuner.tuner.space import sample
from llm_autotuner.task import Task

RENDER_RUN_ID = "render"
# The names of the files `render_trials` writes.
EARLIER_RENDER = re.compile(r"trial-\d+-(launch\.json|inferenceservice\.yaml|benchmarkjob\.yaml)|claims\.json"
                            r"|cluster-serving-runtime\.yaml")


def winner_files(task: Task, served_name: str, executable: str, model_path: str,
                 parameters: dict[str, Any]) -> dict[str, str]:
    """What deploys the winning config for good, beyond its launch line (OME: an InferenceService)."""
    profile = profile_for(task.engine.name)
    spec = EngineSpec(experiment=task.name, run_id="", trial_id="best", profile=profile, executable=executable,
                      model_path=model_path, served_name=served_name,
                      flags=profile.merged(task.engine.args, parameters), workdir=Path("."), env=dict(task.engine.env))
    return backend_for(task.deployment).export(spec)


def render_trials(task: Task, trials: int) -> tuple[dict[str, str], list[str]]:
    """(file name -> content, notes): per trial what its backend would deploy (a manifest on OME,
    a launch line locally) and, with the BenchmarkJob runner, its job; and `claims.json`, what each
    trial would hold in Ray (engine and load generator) on a node with this machine's CPUs. A
    sampled config the run would skip (more GPUs than the deployment offers, flag values the engine
    refuses together) is named in the notes instead of rendered."""
    profile = profile_for(task.engine.name)
    backend = backend_for(task.deployment)
    executable, model_path = profile.launch_paths(task.model, task.engine)
    node_cpus = os.cpu_count() or 1
    offers = backend.offers()  # (a local machine's GPUs are Ray's to count, at the run)
    specs: dict[int, EngineSpec] = {}
    claims, notes = {}, []
    # A run hands out no config twice (search.DistinctConfigs): neither does render.
    effective = effective_of(task)
    size = distinct_count(task.search_space, effective)
    if size is not None and size < trials:
        notes.append(f"the space holds {counted(size, 'config')} the engine runs differently: "
                     f"{size} sampled, not {trials}")
        trials = size
    seen: set[str] = set()
    rng = random.Random()
    for number in range(1, trials + 1):
        for _ in range(1000):
            params = effective(sample(task.search_space))  # as a run would hand it out
            if spelling(params) not in seen:
                break
        else:  # where the engine runs most configs alike, sampling may not find the rest: list them
            # (a space too large to list: a repeat, as unlikely as it is then)
            params = untried_config(task.search_space, effective, size, seen, rng) or params
        seen.add(spelling(params))
        claims[f"trial-{number}"] = claim = trial_claim(task, params, node_cpus)
        over = beyond_offers(claim, offers)
        flags = profile.merged(task.engine.args, params)
        refused = f"needs {over}" if over else conflict(task.engine.name, flags)
        if refused:
            config = ", ".join(f"{name}={value}" for name, value in params.items())
            notes.append(f"trial {number} ({config}) is not rendered: it {refused} (a run skips it)")
            continue
        specs[number] = EngineSpec(
            experiment=task.name, run_id=RENDER_RUN_ID, trial_id=f"trial{number}", profile=profile,
            executable=executable, model_path=model_path, served_name=served_model_name(task.model, model_path),
            flags=flags, workdir=Path("."), env=dict(task.engine.env))
    files = backend.render(specs)
    files["claims.json"] = json.dumps(claims, indent=2) + "\n"
    if task.benchmark.runner == "benchmarkjob":
        from llm_autotuner.trainables.benchmark_job import BenchmarkJobRunner

        runner = BenchmarkJobRunner(task, RENDER_RUN_ID, profile.api_backend)
        for number, spec in specs.items():
            files[f"trial-{number}-benchmarkjob.yaml"] = runner.render(spec)
    return files, notes
