"""Replays the tuner's search, many seeds at a time, on a grid measured once on the real engine.

A search on the real engine costs ~10 minutes, so `search_efficiency.py` can afford 3 seeds: too few
to tell two search settings apart, or one from random search (the spread over seeds is larger
than the gaps). This script measures the grid once (`record`), keeping every config's stages and
how long each part of its trial took, and then (`replay`) runs the tuner's own searcher and
scheduler (tuner/search.py: build_searcher, build_scheduler, with the baseline, the stage ladder
and ASHA), driven in the order Ray Tune's controller calls them, one trial at a time, each trial
reporting its recorded stages instead of measuring them,
and re-measures the finalists as the driver does (tuner/results.py: finalists, winner on the
re-measured mean). Each reported value is the recorded one times lognormal noise (`--noise`, the
run-to-run spread measured on this machine), so luck plays as it does on the engine.

Time is what the real runs would have taken: each trial costs its recorded start (engine,
warm-up, genai-bench), the stages it ran and its teardown, plus the recorded gap Ray leaves
between trials; the fraction is over the recorded grid's own sum. Reached is the winner's
recorded value over the grid's best (for a latency, the best's over the winner's), so "the
truth" is the grid's single run of each config, noise included. `--metric` replays the same
recording on another objective (any metric its stages hold).

    .venv/bin/python benchmarks/search_replay.py record --keep DIR [--out benchmarks/data/grid.json]
    .venv/bin/python benchmarks/search_replay.py replay benchmarks/data/grid.json [--seeds 20]
        [--settings hyperopt random ...] [--metric ttft_p90]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
from datetime import date
from pathlib import Path
from statistics import fmean, stdev

sys.path.insert(0, str(Path(__file__).parent))
import search_efficiency  # noqa: E402  (the same space, workload and objective)

# Settings compared by `replay`: the task's `search` section, on top of the defaults below.
SETTINGS = {
    "hyperopt": {"algorithm": "hyperopt", "num_samples": 8},
    "random": {"algorithm": "random", "num_samples": 8},
    "optuna": {"algorithm": "optuna", "num_samples": 8},
    "hyperopt-grace2": {"algorithm": "hyperopt", "num_samples": 8, "grace_period": 2},
    "hyperopt-top2x1": {"algorithm": "hyperopt", "num_samples": 8, "confirm_top_k": 2, "confirm_repeats": 1},
    "hyperopt-12": {"algorithm": "hyperopt", "num_samples": 12},
    "random-12": {"algorithm": "random", "num_samples": 12},
    "optuna-12": {"algorithm": "optuna", "num_samples": 12},
    "random-top2x1": {"algorithm": "random", "num_samples": 8, "confirm_top_k": 2, "confirm_repeats": 1},
    "optuna-top2x1": {"algorithm": "optuna", "num_samples": 8, "confirm_top_k": 2, "confirm_repeats": 1},
    "hyperopt-12-top2x1": {"algorithm": "hyperopt", "num_samples": 12, "confirm_top_k": 2, "confirm_repeats": 1},
    "optuna-12-top2x1": {"algorithm": "optuna", "num_samples": 12, "confirm_top_k": 2, "confirm_repeats": 1},
    "hyperopt-12-top3x2": {"algorithm": "hyperopt", "num_samples": 12, "confirm_top_k": 3, "confirm_repeats": 2},
    "hyperopt-12-top2x3": {"algorithm": "hyperopt", "num_samples": 12, "confirm_top_k": 2, "confirm_repeats": 3},
    "hyperopt-no-asha": {"algorithm": "hyperopt", "num_samples": 8, "scheduler": "none"},
    "hyperopt-16": {"algorithm": "hyperopt", "num_samples": 16},
    "random-16": {"algorithm": "random", "num_samples": 16},
    "optuna-16": {"algorithm": "optuna", "num_samples": 16},
    "hyperopt-24": {"algorithm": "hyperopt", "num_samples": 24},
    "random-24": {"algorithm": "random", "num_samples": 24},
    "optuna-24": {"algorithm": "optuna", "num_samples": 24},
}


def record(keep: Path, out: Path) -> None:
    """The grid, with the engine defaults as its baseline trial, run once; its table written to `out`."""
    keep.mkdir(parents=True, exist_ok=True)
    results, wall = search_efficiency.run(keep, "grid-with-defaults", {
        "algorithm": "grid", "scheduler": "none", "baseline": True, "confirm_repeats": 0}, reuse=True)
    table = extract(results, keep / "grid-with-defaults" / "trials", wall)
    table["task"] = search_efficiency.task("grid", keep, {})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1))
    print(f"{len(table['configs'])} configs in {wall / 60:.1f} min; mean gap between trials {table['gap_s']:.1f} s; "
          f"written to {out}")


def extract(results: dict, trials: Path, wall: float) -> dict:
    """Each config's stages and the time of each part of its trial, from a run's results and timelines."""
    configs, spans = [], []
    for r in results["all_results"]:
        if r["status"] != "completed":
            raise SystemExit(f"record: trial {r['trial_id']} ended {r['status']}; the replay needs every config measured")
        timeline = json.loads((trials / r["trial_id"] / "timeline.json").read_text())
        done = [timeline[f"stage_{i}_done"] for i in range(1, len(r["stages"]) + 1)]
        spans.append((timeline["trial_start"], timeline["trial_end"]))
        configs.append({
            "parameters": None if r["baseline"] else r["parameters"],
            "stages": r["stages"],
            "start_s": done[0] - timeline["trial_start"],  # engine start, warm-up, genai-bench's start, stage 1
            "stage_s": [b - a for a, b in zip(done, done[1:])],  # each later stage
            "teardown_s": timeline["trial_end"] - done[-1],
        })
    spans.sort()
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    if min(gaps) < 0:
        raise SystemExit("record: trials overlapped; the replay assumes one trial at a time")
    return {"measured": date.today().isoformat(), "machine": f"{platform.node()}, {platform.platform()}",
            "gap_s": fmean(gaps), "grid_wall_s": wall, "configs": configs}


def trial_cost(config: dict, stages_run: int, gap: float) -> float:
    return config["start_s"] + sum(config["stage_s"][:stages_run - 1]) + config["teardown_s"] + gap


def replay_one(table: dict, setting: dict, seed: int, noise: float, metric: str | None = None) -> dict:
    """One search as a user would run it, on the recorded grid; returns its winner, reached and cost."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher
    from ray.tune.utils import flatten_dict

    from llm_autotuner.objective import maximize, score_stages, weighted_mean
    from llm_autotuner.outcome import BASELINE_KEY, Outcome
    from llm_autotuner.task import parse_task
    from llm_autotuner.tuner.results import TrialRecord, candidates, finalists, rank_finalists
    from llm_autotuner.tuner.search import METRIC, MODE, build_scheduler, build_searcher, num_trials
    from llm_autotuner.tuner.space import to_ray

    objective = {"objective": {"metric": metric}} if metric else {}
    task = parse_task(table["task"] | {"search": {"seed": seed, **setting}} | objective)
    metric, limits = task.objective.metric, task.limits
    by_key = {json.dumps(c["parameters"], sort_keys=True): c for c in table["configs"]}
    rng = random.Random(seed)

    def measured(config: dict) -> list[dict]:
        """The recorded stages with this run's luck: one factor per run (drift) times one per stage."""
        run = math.exp(rng.gauss(0, noise))
        return [s | {metric: s[metric] * run * math.exp(rng.gauss(0, noise / 2))} for s in config["stages"]]

    def lookup(config: dict) -> dict:
        return by_key["null" if config.get(BASELINE_KEY) else json.dumps(
            {k: v for k, v in config.items() if k != BASELINE_KEY}, sort_keys=True)]

    def lookup_params(params: dict, baseline: bool) -> dict:
        return lookup(params | ({BASELINE_KEY: True} if baseline else {}))

    # Ray Tune's controller, one trial at a time as on this machine (tune_controller.py:
    # _process_trial_result, stop_trial), driving the tuner's own searcher and scheduler: a trial
    # reports its recorded stages (with this run's luck) until it ends or the scheduler stops it.
    searcher, scheduler = build_searcher(task, max_concurrent=1), build_scheduler(task)
    searcher.set_search_properties(METRIC, MODE, to_ray(task.search_space))
    scheduler.set_search_properties(METRIC, MODE)
    records, cost = [], 0.0
    for number in range(num_trials(task)):
        trial = SimpleNamespace(trial_id=f"replay{number:03d}", config=searcher.suggest(f"replay{number:03d}"))
        if trial.config is None or trial.config == Searcher.FINISHED:
            break
        scheduler.on_trial_add(None, trial)
        recorded = lookup(trial.config)
        stages, reports = measured(recorded), []
        for index in range(1, len(stages) + 1):
            score = score_stages(stages[:index], metric, limits)
            final = index == len(stages)
            result = {"stage": index, "score": score.score, "objective": score.value,
                      "objectives": {metric: weighted_mean(stages[:index], metric)},
                      "outcome": Outcome.COMPLETED.value if final else None, "done": final,
                      "trial_id": trial.trial_id, "training_iteration": index}
            reports.append(result)
            flat = flatten_dict(result)
            if final or scheduler.on_trial_result(None, trial, flat) == TrialScheduler.STOP:
                break
            searcher.on_trial_result(trial.trial_id, flat)
        scheduler.on_trial_complete(None, trial, flatten_dict(reports[-1]))
        searcher.on_trial_complete(trial.trial_id, result=flatten_dict(reports[-1]))
        cost += trial_cost(recorded, len(reports), table["gap_s"])
        baseline = bool(trial.config.get(BASELINE_KEY))
        params = {k: v for k, v in trial.config.items() if k != BASELINE_KEY}
        # Ranked as tuner/results.py ranks a search's trials: by the reported score, completed only.
        records.append(TrialRecord(trial.trial_id, params, baseline, reports))
    # The driver's confirmation: the finalists re-measured in turns, the winner on those runs only,
    # chosen by the driver's own ranking (tuner/results.py: rank_finalists).
    chosen, runs = finalists(task, records), []
    for repeat in range(task.search.confirm_repeats):
        for r in chosen:
            config = lookup_params(r.parameters, r.baseline)
            value = weighted_mean(measured(config), metric)
            runs.append(TrialRecord(f"confirm{repeat}-{len(runs)}", r.parameters, r.baseline,
                                    [{"objective": value, "outcome": Outcome.COMPLETED.value}]))
            cost += trial_cost(config, len(config["stages"]), table["gap_s"])
    if chosen and runs:
        winner = rank_finalists(task, records, runs)[0].record
    else:
        winner = (candidates(task, records) or [None])[0]
    truth = {k: weighted_mean(c["stages"], metric) for k, c in by_key.items()}
    best = (max if maximize(metric) else min)(v for k, v in truth.items() if k != "null")
    won = "null" if winner is None or winner.baseline else json.dumps(winner.parameters, sort_keys=True)
    grid_cost = sum(trial_cost(c, len(c["stages"]), table["gap_s"]) for k, c in by_key.items() if k != "null")
    reached = truth[won] / best if maximize(metric) else best / truth[won]
    return {"reached": reached, "time": cost / grid_cost, "winner": won, "trials": len(records)}


def replay(table_path: Path, settings: list[str], seeds: int, noise: float, metric: str | None) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study otherwise
    table = json.loads(table_path.read_text())
    print(f"grid of {table_path} ({table['measured']}, {table['machine']}); noise {noise:.1%} per run; "
          f"{seeds} seeds per setting; objective {metric or table['task']['objective']['metric']}")
    print("| setting | reached: mean (95% CI) | reached >= 99% | reached >= 97% | time vs grid: mean (min-max) |")
    print("|---|---|---|---|---|")
    for name in settings:
        rows = [replay_one(table, SETTINGS[name], seed, noise, metric) for seed in range(1, seeds + 1)]
        reached = [r["reached"] for r in rows]
        times = [r["time"] for r in rows]
        half = 1.96 * stdev(reached) / math.sqrt(len(reached)) if len(reached) > 1 else float("nan")
        print(f"| {name} | {fmean(reached):.1%} (±{half:.1%}) | {sum(x >= 0.99 for x in reached)}/{seeds} | "
              f"{sum(x >= 0.97 for x in reached)}/{seeds} | {fmean(times):.1%} ({min(times):.1%}-{max(times):.1%}) |",
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="run the grid (with the engine defaults) and write its table")
    rec.add_argument("--keep", type=Path, required=True, help="the grid's results folder (reused if complete)")
    rec.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / f"grid-{date.today()}.json")
    rep = commands.add_parser("replay", help="replay the searches on a recorded table")
    rep.add_argument("table", type=Path)
    rep.add_argument("--seeds", type=int, default=20)
    rep.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    # The 2026-12-02 re-measurements (docs/benchmarks.md: 6 configs x 3 runs in turns) spread by
    # 1.7-5.3% (standard deviation over the mean), 3.7% pooled; the model's run factor plus the
    # stage factor averaged over 2 stages comes to about the same.
    rep.add_argument("--noise", type=float, default=0.035, help="run-to-run spread (lognormal sigma of a run)")
    # Any metric the grid recorded: the same measurements judged on another objective.
    rep.add_argument("--metric", help="the objective to search on (default: the recorded task's)")
    args = parser.parse_args()
    if args.command == "record":
        record(args.keep, args.out)
    else:
        replay(args.table, args.settings, args.seeds, args.noise, args.metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
