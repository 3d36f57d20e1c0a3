"""An API key planted in the environment reaches the engine and genai-bench (the run completes
against an engine that demands it) and appears in no file the run writes, nor in its output."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import engine_processes

pytestmark = pytest.mark.e2e


def files_under(*roots: Path):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


def test_a_planted_api_key_is_used_but_never_written(tmp_path):
    secret = f"sk-planted-{uuid.uuid4().hex}"
    served = f"secret-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "secret",
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 1024, "threads": 1}},
        "search_space": {"parallel": [1, 2]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [2], "max_requests_per_stage": 4},
        "search": {"algorithm": "grid", "scheduler": "none", "baseline": False, "confirm_top_k": 1,
                   "confirm_repeats": 1},
        "results_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    env = {**os.environ, "AUTOTUNER_API_KEY": secret,  # what the tuner sends
           "LLAMA_API_KEY": secret,  # what llama-server demands (its --api-key, from the environment)
           "XDG_STATE_HOME": str(tmp_path / "state")}
    began = time.time()
    run = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert engine_processes(served) == set()

    ray_sessions = [p for p in Path("/tmp/ray").glob("session_2*") if p.stat().st_mtime >= began]
    written = list(files_under(tmp_path / "results", tmp_path / "state", *ray_sessions))
    assert any(p.name == "experiment_metadata.json" for p in written)  # genai-bench's, which held the key
    assert any(p.name == "engine.log" for p in written)
    leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
    assert leaks == []
    assert secret not in run.stdout + run.stderr
