"""Does the default search find the grid's best config for a fraction of the grid's cost?

Runs, on the real CPU engine (llama.cpp + SmolLM2-135M), the exhaustive grid over a 48-config
space and then the default search (HyperOpt + ASHA + baseline + re-measurement of the top 3, all
as a user gets them) once per seed, one after the other so they never share the CPU. Reports for
each search run:
  - reached: the search's winner as the grid measured it / the grid's best. Both numbers come
    from the same full-length grid runs, so neither side gains from a lucky measurement; the
    grid's best is the maximum of 48 noisy runs, which favours the grid.
  - own: the winner's mean over the search's re-measurements / the grid's best.
  - time: the search's wall time / the grid's wall time (each a whole `autotuner run`).
Goal: reached >= 97% in <= 25% of the time.

    .venv/bin/python benchmarks/search_efficiency.py [--seeds 7 8] [--samples 12] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPACE = {
    "parallel": [1, 2, 4, 8],
    "threads": [1, 2],
    "ubatch-size": [32, 128, 512],
    "flash-attn": [True, False],
}
GRID_SIZE = 4 * 2 * 3 * 2


def task(name: str, root: Path, search: dict) -> dict:
    return {
        "name": name,
        "model": {"path": "builtin:smollm2", "name": "smollm2-135m"},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 4096}},
        "search_space": SPACE,
        "benchmark": {"traffic_scenario": "D(100,64)", "concurrency": [1, 4, 8], "max_requests_per_stage": 16},
        "objective": {"metric": "output_throughput"},
        "search": search,
        "results_dir": str(root),
    }


def run(root: Path, name: str, search: dict) -> tuple[dict, float]:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task(name, root, search), sort_keys=False))
    began = time.time()
    subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(path)], check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - began
    return json.loads((root / name / "results.json").read_text()), wall


def key(parameters: dict) -> tuple:
    return tuple(parameters.get(name) for name in SPACE)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    parser.add_argument("--samples", type=int, default=12, help="num_samples of the default search")
    parser.add_argument("--keep", type=Path, help="results folder (default: a temporary one)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="autotuner-search-efficiency-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"results in {root}", flush=True)

    grid, grid_wall = run(root, "grid", {"algorithm": "grid", "scheduler": "none", "baseline": False,
                                         "confirm_repeats": 0})
    measured = {key(r["parameters"]): r["objective_score"] for r in grid["all_results"]
                if r["objective_score"] is not None and r["status"] == "completed"}
    best_key = max(measured, key=measured.get)
    grid_best = measured[best_key]
    print(f"grid: {len(measured)}/{GRID_SIZE} configs measured in {grid_wall / 60:.1f} min, "
          f"best {grid_best:.1f} tok/s at {dict(zip(SPACE, best_key))}", flush=True)

    rows = []
    for seed in args.seeds:
        found, wall = run(root, f"search-seed{seed}", {"num_samples": args.samples, "seed": seed})
        best = found["best_result"]
        winner = key(best["parameters"])
        # The baseline (engine defaults) is not a grid point: then only its own number exists.
        reached = measured.get(winner)
        rows.append({
            "seed": seed,
            "trials": found["total_experiments"],
            "stopped_early": sum(r["status"] == "stopped-early" for r in found["all_results"]),
            "winner": best["parameters"],
            "reached": None if reached is None else reached / grid_best,
            "own": best["objective_score"] / grid_best,
            "time": wall / grid_wall,
            "wall_min": wall / 60,
        })
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nmachine: {platform.node()}, {platform.platform()}, Python {platform.python_version()}")
    print(f"grid: {GRID_SIZE} configs, {grid_wall / 60:.1f} min, best {grid_best:.1f} tok/s "
          f"({dict(zip(SPACE, best_key))})")
    print("| seed | trials (stopped early) | wall time | time vs grid | winner | reached (grid's measure) | own measure |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        reached = "baseline" if row["reached"] is None else f"{row['reached']:.1%}"
        winner = ", ".join(f"{k}={v}" for k, v in row["winner"].items() if v is not None) or "engine defaults"
        print(f"| {row['seed']} | {row['trials']} ({row['stopped_early']}) | {row['wall_min']:.1f} min | "
              f"{row['time']:.1%} | {winner} | {reached} | {row['own']:.1%} |")
    (root / "summary.json").write_text(json.dumps({"grid_wall_s": grid_wall, "grid_best": grid_best,
                                                   "grid": {str(k): v for k, v in measured.items()},
                                                   "searches": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
