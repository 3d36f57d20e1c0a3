"""Does the default search find the grid's best config for a fraction of the grid's cost?

Runs, on the real CPU engine (llama.cpp + SmolLM2-135M), the exhaustive grid over a 48-config
space and then the default search (HyperOpt + ASHA + baseline + re-measurement of the top 3, all
as a user gets them) once per seed, one after the other so they never share the CPU. Then it
re-measures the grid's winner and each search's winner `--repeats` times, interleaved, because a
single measurement here wobbles by several percent and the best of 48 noisy runs is flattered by
its luck. Reports for each search run:
  - reached: the search winner's mean over the re-measurements / the grid winner's mean over
    the same re-measurements (the fair comparison);
  - reached (grid's single run): the search winner as the grid measured it once / the grid's best;
  - time: the search's wall time / the grid's wall time (each a whole `autotuner run`), and the
    search phase alone (without its re-measurement of the top 3).
Goal: reached >= 97% in <= 25% of the time.

    .venv/bin/python benchmarks/search_efficiency.py [--seeds 7 8] [--samples 12] [--repeats 3]
        [--keep DIR [--reuse]]    # --reuse: keep the grid and searches already in DIR
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
from statistics import fmean

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


def run(root: Path, name: str, search: dict, reuse: bool) -> tuple[dict, float]:
    results, walls = root / name / "results.json", root / "walls.json"
    known = json.loads(walls.read_text()) if walls.is_file() else {}
    if reuse and results.is_file() and name in known:
        return json.loads(results.read_text()), known[name]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task(name, root, search), sort_keys=False))
    began = time.time()
    subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path)], check=True, stdout=subprocess.DEVNULL)
    known[name] = time.time() - began
    walls.write_text(json.dumps(known))
    return json.loads(results.read_text()), known[name]


def key(parameters: dict) -> tuple:
    return tuple(parameters.get(name) for name in SPACE)


def confirm_phase_s(results: dict) -> float:
    """Wall time of the search's re-measurement of its top configs, from their timelines."""
    trials = Path(results["ray_experiment_dir"]).parent / "trials"
    confirmed = {r["trial_id"] for r in results["all_results"]}
    spans = [json.loads((d / "timeline.json").read_text()) for d in trials.iterdir() if d.name not in confirmed]
    return max(m["trial_end"] for m in spans) - min(m["trial_start"] for m in spans) if spans else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    parser.add_argument("--samples", type=int, default=12, help="num_samples of the default search")
    parser.add_argument("--repeats", type=int, default=3, help="re-measurements of each winner")
    parser.add_argument("--keep", type=Path, help="results folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="reuse the runs already in --keep")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="autotuner-search-efficiency-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"results in {root}", flush=True)

    grid, grid_wall = run(root, "grid", {"algorithm": "grid", "scheduler": "none", "baseline": False,
                                         "confirm_repeats": 0}, args.reuse)
    measured = {key(r["parameters"]): r["objective_score"] for r in grid["all_results"]
                if r["objective_score"] is not None and r["status"] == "completed"}
    grid_key = max(measured, key=measured.get)
    print(f"grid: {len(measured)}/{GRID_SIZE} configs measured in {grid_wall / 60:.1f} min, "
          f"best {measured[grid_key]:.1f} tok/s at {dict(zip(SPACE, grid_key))}", flush=True)

    searches = []
    for seed in args.seeds:
        found, wall = run(root, f"search-seed{seed}", {"num_samples": args.samples, "seed": seed}, args.reuse)
        searches.append((seed, found, wall))
        print(f"seed {seed}: {wall / 60:.1f} min, winner {found['best_result']['parameters']}", flush=True)

    # The winners, re-measured in turns (A B C A B C ...) so that drift hits them alike.
    winners = list(dict.fromkeys([grid_key] + [key(found["best_result"]["parameters"]) for _, found, _ in searches]))
    points = [dict(zip(SPACE, k)) for k in winners if None not in k] * args.repeats
    again, _ = run(root, "remeasure", {"algorithm": "random", "initial_points": points, "num_samples": len(points),
                                       "scheduler": "none", "baseline": False, "confirm_repeats": 0}, args.reuse)
    runs: dict[tuple, list[float]] = {}
    for r in again["all_results"]:
        if r["status"] == "completed":
            runs.setdefault(key(r["parameters"]), []).append(r["objective_score"])
    grid_mean = fmean(runs[grid_key])

    rows = []
    for seed, found, wall in searches:
        best = found["best_result"]
        winner = key(best["parameters"])
        rows.append({
            "seed": seed,
            "trials": found["total_experiments"],
            "stopped_early": sum(r["status"] == "stopped-by-scheduler" for r in found["all_results"]),
            "winner": best["parameters"],
            "reached": fmean(runs[winner]) / grid_mean if winner in runs else None,
            "reached_single": measured[winner] / measured[grid_key] if winner in measured else None,
            "time": wall / grid_wall,
            "search_phase_time": (wall - confirm_phase_s(found)) / grid_wall,
            "wall_min": wall / 60,
        })

    print(f"\nmachine: {platform.node()}, {platform.platform()}, Python {platform.python_version()}")
    print(f"grid: {GRID_SIZE} configs, {grid_wall / 60:.1f} min; its winner {dict(zip(SPACE, grid_key))}: "
          f"{measured[grid_key]:.1f} tok/s in the grid, {grid_mean:.1f} re-measured {args.repeats}x")
    for k, values in runs.items():
        print(f"  re-measured {dict(zip(SPACE, k))}: " + ", ".join(f"{v:.1f}" for v in values))
    print("| seed | trials (stopped early) | wall time | time vs grid (search phase) | winner "
          "| reached (re-measured) | reached (grid's single run) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        winner = ", ".join(f"{k}={v}" for k, v in row["winner"].items() if v is not None) or "engine defaults"
        pct = lambda value: "n/a (baseline)" if value is None else f"{value:.1%}"
        print(f"| {row['seed']} | {row['trials']} ({row['stopped_early']}) | {row['wall_min']:.1f} min | "
              f"{row['time']:.1%} ({row['search_phase_time']:.1%}) | {winner} | {pct(row['reached'])} | "
              f"{pct(row['reached_single'])} |")
    (root / "summary.json").write_text(json.dumps({
        "grid_wall_s": grid_wall, "grid": {str(k): v for k, v in measured.items()},
        "remeasured": {str(k): v for k, v in runs.items()}, "searches": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
