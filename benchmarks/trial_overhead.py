"""How much time a trial spends outside engine start-up and load generation (goal: <= 1 s).

Runs a small sequential tuning on the real CPU engine and splits the wall time with each
trial's timeline.json (written by the trainable):
  engine start-up  = trial_start -> engine_ready (process start, model load, health polls)
  load generation  = engine_ready -> last stage done, less genai-bench's own start-up
  genai-bench start-up = engine_ready -> first stage done, less that stage's measured duration
  overhead         = everything else: Ray scheduling and actor start, reports, teardown,
                     results writing, Ray start-up (shared by all trials)

    .venv/bin/python benchmarks/trial_overhead.py [--trials 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autotuner-overhead-"))
    print(f"the run in {root} (kept: remove it when done)", flush=True)
    task = {
        "name": "overhead",
        "model": {"path": "builtin:smollm2"},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 2048}},
        "search_space": {"parallel": [2, 4], "threads": [2]},
        "benchmark": {"traffic_scenario": "D(64,32)", "concurrency": [2, 4], "max_requests_per_stage": 8},
        "search": {"num_samples": args.trials - 1, "scheduler": "none", "max_concurrent": 1, "seed": 0,
                   "confirm_repeats": 0},
        "results_dir": str(root),
    }
    (root / "task.yaml").write_text(yaml.safe_dump(task))
    began = time.time()
    subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(root / "task.yaml")], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.time() - began
    results = json.loads((root / "overhead" / "results.json").read_text())
    startup = loadgen = bench_start = inside = 0.0
    spans = []
    for trial_dir in (root / "overhead" / "trials").iterdir():
        marks = json.loads((trial_dir / "timeline.json").read_text())
        stages = sorted(k for k in marks if k.startswith("stage_"))
        first_stage_s = next(r["stages"][0]["duration_s"] for r in results["all_results"]
                             if r["trial_id"] == trial_dir.name)
        startup += marks["engine_ready"] - marks["trial_start"]
        bench_start += marks[stages[0]] - marks["engine_ready"] - first_stage_s
        loadgen += marks[stages[-1]] - marks["engine_ready"]
        inside += marks["trial_end"] - marks[stages[-1]]
        spans.append((marks["trial_start"], marks["trial_end"]))
    n = results["total_experiments"]
    loadgen -= bench_start
    overhead = wall - startup - loadgen - bench_start
    print(f"trials: {n}, wall time: {wall:.1f} s")
    print(f"per trial: engine start-up {startup / n:.2f} s, genai-bench start-up {bench_start / n:.2f} s, "
          f"load generation {loadgen / n:.2f} s")
    spans.sort()
    gaps = sum(later[0] - earlier[1] for earlier, later in zip(spans, spans[1:]))
    start, end = spans[0][0] - began, began + wall - spans[-1][1]
    print(f"once per run: start (Ray, setup) {start:.1f} s, end (results) {end:.1f} s")
    print(f"per trial: overhead {(overhead - start - end) / n:.2f} s, of which teardown {inside / n:.2f} s "
          f"and Ray between trials {gaps / max(1, n - 1):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
