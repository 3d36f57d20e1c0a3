"""Does the default search find the grid's best config for a fraction of the grid's cost, and
does it beat random search at the same budget?

Runs, on the real CPU engine (llama.cpp + SmolLM2-135M), the exhaustive grid over a 48-config
space whose configs differ well beyond the noise (one slot or one thread nearly triples the p90
latency, ubatch 8 adds some 15%; a small context and a quantized KV cache were meant to hurt too,
but measured within noise: this llama.cpp shares one KV cache among the slots), with a latency
objective at high load. Then each searcher in `--algorithms`
(HyperOpt, the default, and random; both with ASHA, the baseline and the re-measurement of
finalists, as a user gets them) once per seed, one after the other so they never share the CPU.
Then it re-measures the grid's winner and each search's winner `--repeats` times, in turns,
because a single measurement here wobbles by several percent and the best of 48 noisy runs is
flattered by its luck. Reports for each search run:
  - reached: the grid winner's re-measured mean / the search winner's (latency: lower is better);
  - reached (grid's single run): the same from the grid's one run of each;
  - time: the search's wall time / the grid's wall time (each a whole `autotuner run`), and the
    search phase alone (without its re-measurement of the finalists);
and per algorithm the mean and range over the seeds.
Goal: reached >= 99% in <= 20% of the grid's time, and ahead of random at the same budget.

    .venv/bin/python benchmarks/search_efficiency.py [--seeds 1 2 3] [--algorithms hyperopt random]
        [--samples 8] [--repeats 3] [--keep DIR [--reuse]]    # --reuse: keep the runs already in DIR
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
    "parallel": [1, 4, 8],
    "threads": [1, 2],
    "ubatch-size": [8, 512],
    "ctx-size": [1024, 4096],  # no answer cut short even at 8 slots: the slots share one KV cache
    "cache-type-k": ["f16", "q8_0"],
}
GRID_SIZE = 3 * 2 * 2 * 2 * 2
OBJECTIVE = "e2e_p90"  # minimised: the reached ratio is grid / search


def task(name: str, root: Path, search: dict) -> dict:
    return {
        "name": name,
        "model": {"path": "builtin:smollm2", "name": "smollm2-135m"},
        "engine": {"name": "llama.cpp"},
        "search_space": SPACE,
        "benchmark": {"traffic_scenario": "D(100,64)", "concurrency": [4, 8], "max_requests_per_stage": 16},
        "objective": {"metric": OBJECTIVE},
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
    subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"], check=True, stdout=subprocess.DEVNULL)
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


def ratio(grid: float, found: float) -> float:
    """How close `found` came to `grid` for the minimised objective: 1.0 is as good as the grid's best."""
    return grid / found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--algorithms", nargs="+", default=["hyperopt", "random"])
    parser.add_argument("--samples", type=int, default=8, help="num_samples of each search (the same budget)")
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
    grid_key = min(measured, key=measured.get)
    print(f"grid: {len(measured)}/{GRID_SIZE} configs feasible in {grid_wall / 60:.1f} min, "
          f"best {OBJECTIVE} {measured[grid_key]:.3f} s at {dict(zip(SPACE, grid_key))}", flush=True)

    searches = []
    for algorithm in args.algorithms:
        for seed in args.seeds:
            found, wall = run(root, f"{algorithm}-seed{seed}",
                              {"algorithm": algorithm, "num_samples": args.samples, "seed": seed}, args.reuse)
            searches.append((algorithm, seed, found, wall))
            print(f"{algorithm} seed {seed}: {wall / 60:.1f} min, winner {(found['best_result'] or {}).get('parameters')}",
                  flush=True)

    # The winners, re-measured in turns (A B C, A B C, ...) so that drift hits them alike: one run per
    # round, each holding every winner once, and the engine defaults (the baseline trial, first in
    # each round) when a search chose them.
    winners = list(dict.fromkeys([grid_key] + [key(found["best_result"]["parameters"])
                                               for _, _, found, _ in searches if found["best_result"]]))
    defaults = tuple(None for _ in SPACE)
    points = [dict(zip(SPACE, k)) for k in winners if k != defaults]
    runs: dict[tuple, list[float]] = {}
    for round_number in range(1, args.repeats + 1):
        again, _ = run(root, f"remeasure-{round_number}", {
            "algorithm": "random", "initial_points": points, "num_samples": len(points), "scheduler": "none",
            "baseline": defaults in winners, "confirm_repeats": 0}, args.reuse)
        for r in again["all_results"]:
            if r["status"] == "completed":
                runs.setdefault(defaults if r["baseline"] else key(r["parameters"]), []).append(r["objective_score"])
    grid_mean = fmean(runs[grid_key])

    rows = []
    for algorithm, seed, found, wall in searches:
        winner = key(found["best_result"]["parameters"]) if found["best_result"] else None
        rows.append({
            "algorithm": algorithm, "seed": seed,
            "trials": found["total_experiments"],
            "stopped_early": sum(r["status"] == "stopped-by-scheduler" for r in found["all_results"]),
            "winner": found["best_result"]["parameters"] if winner else None,
            "reached": ratio(grid_mean, fmean(runs[winner])) if winner in runs else None,
            "reached_single": ratio(measured[grid_key], measured[winner]) if winner in measured else None,
            "time": wall / grid_wall,
            "search_phase_time": (wall - confirm_phase_s(found)) / grid_wall,
            "wall_min": wall / 60,
        })

    print(f"\nmachine: {platform.node()}, {platform.platform()}, Python {platform.python_version()}")
    print(f"grid: {GRID_SIZE} configs, {grid_wall / 60:.1f} min; its winner {dict(zip(SPACE, grid_key))}: "
          f"{measured[grid_key]:.3f} s in the grid, {grid_mean:.3f} s re-measured {args.repeats}x")
    for k, values in runs.items():
        print(f"  re-measured {dict(zip(SPACE, k))}: " + ", ".join(f"{v:.3f}" for v in values))
    pct = lambda value: "n/a" if value is None else f"{value:.1%}"
    print("| algorithm | seed | trials (stopped early) | wall time | time vs grid (search phase) | winner "
          "| reached (re-measured) | reached (grid's single run) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        winner = ", ".join(f"{k}={v}" for k, v in (row["winner"] or {}).items() if v is not None) or "engine defaults"
        print(f"| {row['algorithm']} | {row['seed']} | {row['trials']} ({row['stopped_early']}) | "
              f"{row['wall_min']:.1f} min | {row['time']:.1%} ({row['search_phase_time']:.1%}) | {winner} | "
              f"{pct(row['reached'])} | {pct(row['reached_single'])} |")
    print("| algorithm | reached: mean (min-max over seeds) | time vs grid: mean (min-max) |")
    print("|---|---|---|")
    for algorithm in args.algorithms:
        mine = [row for row in rows if row["algorithm"] == algorithm]
        reached = [row["reached"] or 0.0 for row in mine]  # no winner: reached nothing
        times = [row["time"] for row in mine]
        print(f"| {algorithm} | {fmean(reached):.1%} ({min(reached):.1%}-{max(reached):.1%}) | "
              f"{fmean(times):.1%} ({min(times):.1%}-{max(times):.1%}) |")
    (root / "summary.json").write_text(json.dumps({
        "grid_wall_s": grid_wall, "grid": {str(k): v for k, v in measured.items()},
        "remeasured": {str(k): v for k, v in runs.items()}, "searches": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
