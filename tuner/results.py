"""Turn a finished (or interrupted) Ray Tune run into results.json, trials.csv, best_command.txt
and a summary table."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from statistics import fmean, stdev
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyarrow.fs import LocalFileSystem
from ray.tune import Callback
from scipy.stats import ttest_ind

from llm_autotuner.cluster.engines import Launch, profile_for
from llm_autotuner.outcome import BASELINE_KEY, Outcome, creation_number, stage_metrics, trial_params
from llm_autotuner.trainables.trial import Resolved
from llm_autotuner.errors import lost_worker, trial_error
from llm_autotuner.metrics import METRICS, figure, maximize
from llm_autotuner.objective import gain, weighted_mean
from llm_autotuner.task import Task

LAUNCH_LINE_PORT = 8080


@dataclass
class TrialRecord:
    trial_id: str
    parameters: dict[str, Any]
    baseline: bool
    reports: list[dict]  # every tune.report of the trial, in order
    ray_error: str | None = None
    experiment_id: int = 0
    ended: bool = True  # False when the run was interrupted (Ctrl-C) while this trial ran
    infrastructure: bool = False  # it failed for the platform's reason (a lost worker, a 403), not the config's
    cut_by_run: bool = False  # Ray stopped it mid-way because the whole run was ending (budget, patience)
    ray_failures: int = 0  # how often Ray saw it fail (a lost worker); it ran it again after each but a last one
    stages: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        self.stages = [metrics for report in self.reports if (metrics := stage_metrics(report))]

    @property
    def last(self) -> dict:
        return self.reports[-1] if self.reports else {}

    @property
    def error(self) -> str | None:
        return self.ray_error or self.last.get("error")

    @property
    def status(self) -> Outcome:
        if self.error:
            # A stage report carries "outcome": None; Ray's error after it (an exception the trial
            # did not turn into a report) is a failure.
            return Outcome.FAILED_INFRASTRUCTURE if self.infrastructure else Outcome(self.last.get("outcome") or "failed")
        stated = self.last.get("outcome")
        if stated:
            return Outcome(stated)  # the trial decided its end: last stage, broken SLO, STOP file
        if not self.ended:
            return Outcome.INTERRUPTED
        # Ray ended it between stages: the run's end (or before its first stage: only the run can), else the scheduler.
        return Outcome.STOPPED_BY_BUDGET if self.cut_by_run or not self.stages else Outcome.STOPPED_BY_SCHEDULER

    @property
    def objective(self) -> float | None:
        # A failed trial has no value, even if stages came in before its engine or worker was lost.
        return None if self.error else self.last.get("objective")

    @property
    def score(self) -> float:
        return float("-inf") if self.error else self.last.get("score", float("-inf"))


def _read_text(trial_dir: str | os.PathLike, name: str, filesystem=None) -> str:
    """A file of Ray's trial folder ('' if none), through the run's storage filesystem if not local."""
    if filesystem is None:
        path = Path(trial_dir) / name
        return path.read_text(errors="replace") if path.is_file() else ""
    try:
        with filesystem.open_input_stream(f"{trial_dir}/{name}") as stream:
            return stream.read().decode(errors="replace")
    except (FileNotFoundError, OSError):
        return ""


def read_reports(trial_dir: str | os.PathLike, filesystem=None) -> list[dict]:
    """The reports of the trial's last attempt, from Ray Tune's result.json (one JSON object per
    line). Ray appends a trial it runs again (its worker was lost, --resume) to the same file, and
    the new attempt counts its iterations from 1 again: what came before belongs to another engine."""
    reports: list[dict] = []
    for line in _read_text(trial_dir, "result.json", filesystem).splitlines():
        if line.strip():
            report = json.loads(line)
            if reports and report.get("training_iteration", 0) <= reports[-1].get("training_iteration", 0):
                reports = []
            reports.append(report)
    return reports


def ray_failures(trial_dir: str | os.PathLike, filesystem=None) -> int:
    """How many failures Ray recorded for the trial (one "Failure # N" entry per failure in its error.txt)."""
    return _read_text(trial_dir, "error.txt", filesystem).count("Failure # ")


def from_result_grid(grid, ended: set[str] | None = None, cut_by_run: set[str] = frozenset()) -> list[TrialRecord]:
    """Records of every trial; those whose id is not in `ended` (when given) were interrupted,
    those in `cut_by_run` were stopped mid-way by the run's end (time budget, patience, the guard)."""
    records = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        # Ray's files of the trial, in the run's storage (`filesystem`: None for a local folder).
        filesystem = None if isinstance(result.filesystem, LocalFileSystem) else result.filesystem
        record = _record(trial_id, result.config, result.path, result.error, ended=ended is None or trial_id in ended,
                         filesystem=filesystem)
        record.cut_by_run = trial_id in cut_by_run
        records.append(record)
    return _in_creation_order(records)


def from_trials(trials, ended: set[str]) -> list[TrialRecord]:
    """Records of the trials that have ended, from Ray Tune's live Trial objects (as a callback
    sees them): those Ray marked as ended, and those in `ended` (ending now: Ray changes their
    status after the callbacks)."""
    records = []
    for trial in trials:
        if trial.local_path and (trial.status in ("TERMINATED", "ERROR") or trial.trial_id in ended):
            error = None
            if trial.status == "ERROR":
                error = trial_error(trial) or RuntimeError("Ray reported the trial as failed (see its error.txt)")
            records.append(_record(trial.trial_id, trial.config, trial.local_path, error, ended=True))
    return _in_creation_order(records)


def _record(trial_id: str, config: dict | None, trial_dir: str, error: BaseException | None,
            ended: bool, filesystem=None) -> TrialRecord:
    config = config or {}
    lost = lost_worker(error)
    return TrialRecord(trial_id=trial_id, parameters=trial_params(config), baseline=bool(config.get(BASELINE_KEY)),
                       reports=read_reports(trial_dir, filesystem), ray_error=lost or (_first_line(error) if error else None),
                       experiment_id=creation_number(Path(trial_dir).name, trial_id), ended=ended,
                       infrastructure=lost is not None,
                       ray_failures=ray_failures(trial_dir, filesystem))


def _in_creation_order(records: list[TrialRecord]) -> list[TrialRecord]:
    # Ray puts a creation counter after the id in each trial's folder name: experiment_id.
    return sorted(records, key=lambda record: record.experiment_id)


class LiveResults(Callback):
    """Rewrites results.json and trials.csv (atomically) each time a trial ends, so a crash at any
    moment leaves valid files holding every trial finished so far. The run's end writes the final ones.
    With `searched` (the search's trials), the trials seen are that search's confirmation runs."""

    def __init__(self, task: Task, resolved: Resolved, results_dir: Path, experiment_dir: str,
                 searched: list[TrialRecord] | None = None):
        self.task, self.resolved, self.results_dir, self.experiment_dir = task, resolved, results_dir, experiment_dir
        self.searched = searched

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(trials, trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trials, trial.trial_id)

    def _write(self, trials, ending: str) -> None:
        ended = from_trials(trials, {ending})
        summary = (summarize(self.task, self.resolved, ended, self.experiment_dir) if self.searched is None else
                   summarize(self.task, self.resolved, self.searched, self.experiment_dir, ended))
        summary["in_progress"] = True
        write(self.results_dir, summary)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def launch_line(task: Task, resolved: Resolved, parameters: dict[str, Any], ran: dict[str, Any]) -> list[str]:
    """The argv that starts the engine as the trial ran it (`ran`: its last report; on a Ray
    cluster the binary proven on the trial's node, which it reports), its `engine.env` included
    (through `env`, so the line runs from a shell and as an argv alike; the task refuses
    secret-looking names)."""
    profile = profile_for(task.engine.name)
    executable = ran.get("executable") or resolved.node_executables.get(ran.get("node", ""), resolved.executable)
    launch = Launch(executable, resolved.model_path, resolved.served_name, "127.0.0.1", LAUNCH_LINE_PORT)
    env = ["env", *(f"{name}={value}" for name, value in task.engine.env.items())] if task.engine.env else []
    return env + profile.argv(launch, profile.merged(task.engine.args, parameters))


def objective_values(record: TrialRecord, metrics: list[str], weights: list[float] | None) -> dict[str, float]:
    """Each objective as the (weighted) mean over the trial's stages."""
    return {metric: weighted_mean(record.stages, metric, weights) for metric in metrics}


def pareto_front(points: dict[int, dict[str, float]]) -> list[int]:
    """The ids whose objective vectors no other point dominates (at least as good everywhere,
    better somewhere), in the given order."""
    def oriented(values: dict[str, float]) -> list[float]:
        return [value if maximize(metric) else -value for metric, value in values.items()]

    vectors = {key: oriented(values) for key, values in points.items()}
    return [key for key, mine in vectors.items()
            if not any(all(o >= m for o, m in zip(other, mine)) and other != mine
                       for other_key, other in vectors.items() if other_key != key)]


def candidates(task: Task, records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials that completed every stage, those that met every SLO (soft ones too) if any did,
    best score first, each config once (a searcher may propose a config twice)."""
    finished = [r for r in records if r.status == Outcome.COMPLETED]
    met_all = [r for r in finished if all((r.last.get("slos_met") or {}).values())]
    seen: set[str] = set()
    distinct = []
    for record in sorted(met_all or finished, key=lambda r: r.score, reverse=True):
        key = config_key(record.parameters, record.baseline)
        if key not in seen:
            seen.add(key)
            distinct.append(record)
    return distinct


def config_key(parameters: dict[str, Any], baseline: bool) -> str:
    return json.dumps([parameters, baseline], sort_keys=True, default=str)


def finalists(task: Task, records: list[TrialRecord]) -> list[TrialRecord]:
    """What the confirmation runs re-measure, in the search's order: the `confirm_top_k` best tuned
    configs, and the baseline always (when it completed), so that the gain compares two configs
    measured alike. The baseline takes no tuned config's place when its own run ranked among the
    best: which tuned config beats the defaults is what the re-measurement is for. None when
    confirmation is off."""
    search = task.search
    if not (search.confirm_top_k and search.confirm_repeats):
        return []
    ranked = candidates(task, records)
    chosen = [r for r in ranked if not r.baseline][:search.confirm_top_k]
    baseline = next((r for r in records if r.baseline and r.status == Outcome.COMPLETED), None)
    if baseline:
        chosen.append(baseline)
    place = {r.trial_id: rank for rank, r in enumerate(ranked)}
    return sorted(chosen, key=lambda r: place.get(r.trial_id, len(ranked)))  # (stable: an unranked baseline last)


# A re-measurement that ends so is the config's doing, and counts against it.
CONFIG_FAULTS = (Outcome.FAILED, Outcome.INFEASIBLE)


@dataclass
class Finalist:
    """A re-measured config: its trial in the search and its confirmation runs."""

    record: TrialRecord
    runs: list[TrialRecord]

    @property
    def values(self) -> list[float]:
        return [run.objective for run in self.runs if run.status == Outcome.COMPLETED]

    @property
    def failed(self) -> int:
        return sum(run.status in CONFIG_FAULTS for run in self.runs)

    @property
    def qualified(self) -> bool:
        """It may win: measured again, and never failed or broke a hard SLO in doing so."""
        return bool(self.values) and not self.failed

    @property
    def met_every_slo(self) -> bool:
        return all(all((run.last.get("slos_met") or {}).values()) for run in self.runs
                   if run.status == Outcome.COMPLETED)

    @property
    def mean(self) -> float | None:
        return fmean(self.values) if self.values else None

    def metrics(self, weights: list[float] | None) -> dict[str, float]:
        """Each metric every completed re-measurement measured: the mean over those runs of its
        mean over their stages (weighted as the objective is), as `mean` is for the objective."""
        completed = [run for run in self.runs if run.status == Outcome.COMPLETED and run.stages]
        names = [name for name in METRICS if completed and all(
            all(stage.get(name) is not None for stage in run.stages) for run in completed)]
        return {name: fmean(weighted_mean(run.stages, name, weights) for run in completed) for name in names}

    def spread(self) -> dict | None:
        values = self.values
        # The sample standard deviation (n - 1): an estimate of the run-to-run noise; the
        # population one would understate it by a factor of 1.4 with the default 2 runs. None for one run.
        return {"min": min(values), "max": max(values),
                "stdev": stdev(values) if len(values) > 1 else None} if values else None


def rank_finalists(task: Task, records: list[TrialRecord], runs: list[TrialRecord]) -> list[Finalist]:
    """The finalists with their confirmation runs, best first: the qualified ones, then among them
    those whose runs all met every SLO (soft ones too, as `candidates` prefers), then by the mean of
    the runs. The winner is the first, and the ranking shown is this one."""
    by_config: dict[str, list[TrialRecord]] = {}
    for run in runs:
        by_config.setdefault(config_key(run.parameters, run.baseline), []).append(run)
    sign = 1 if maximize(task.objective.metric) else -1
    ranked = [Finalist(r, by_config.get(config_key(r.parameters, r.baseline), [])) for r in finalists(task, records)]
    return sorted(ranked, key=lambda f: (f.qualified, f.met_every_slo, sign * f.mean if f.values else float("-inf")),
                  reverse=True)


SIGNIFICANCE = 0.05  # two configs are told apart when the t-test's p-value is below this


def noise_verdict(ranked: list[Finalist]) -> tuple[bool | None, float | None, str]:
    """Whether the top two qualified finalists are within noise of each other (`difference_p`),
    the p-value, and a sentence saying so. One run each shows no spread: that is said instead."""
    top = [f for f in ranked if f.qualified][:2]
    if len(top) < 2:
        return None, None, "Fewer than two finalists completed their re-measurements: nothing to compare"
    first, second = top
    names = f"Experiments {first.record.experiment_id} and {second.record.experiment_id}"
    p_value = difference_p(first, second)
    if p_value is None:
        return None, None, (f"{names} were re-measured once each, which shows no spread; "
                            f"search.confirm_repeats 2 or more would")
    runs = f"{len(first.values)} and {len(second.values)} runs" if len(first.values) != len(second.values) \
        else f"{len(first.values)} runs each"
    evidence = (f"t-test p = {p_text(p_value)}, {runs}; " +
                "; ".join(f"{f.record.experiment_id}: {figure(min(f.values))} to {figure(max(f.values))}" for f in top))
    if p_value >= SIGNIFICANCE:
        return True, p_value, (f"{names} are within noise of each other ({evidence}): these runs cannot tell them "
                               f"apart; more search.confirm_repeats could")
    return False, p_value, f"{names} are apart by more than the noise ({evidence})"


def p_text(p_value: float) -> str:
    """The p-value with as many digits as it takes to show its side of SIGNIFICANCE: at two digits
    0.0496 and 0.0504 both read "0.05", one told apart and the other not."""
    for digits in range(2, 7):
        text = f"{p_value:.{digits}g}"
        shown = float(text)
        if (shown < SIGNIFICANCE) == (p_value < SIGNIFICANCE) and (shown != SIGNIFICANCE or p_value == SIGNIFICANCE):
            return text
    return f"{p_value:.6g}" if p_value >= SIGNIFICANCE else f"< {SIGNIFICANCE:g}"


def difference_p(a: Finalist, b: Finalist) -> float | None:
    """The two-sided p-value of Student's t-test on two finalists' re-measurements: how often
    runs of two equally good configs would differ at least this much (small: told apart). None
    when either has fewer than two runs, which show no spread.

    Why this test: with the default 2 runs each, two equally good configs' ranges fail to overlap
    one time in three, so non-overlapping ranges (the rule before) told apart configs that were
    not. The pooled variance suits runs taken in turns on one machine (its drift is the noise of
    all of them), and with equal run counts the test stays right when the spreads differ."""
    if min(len(a.values), len(b.values)) < 2:
        return None
    if stdev(a.values) == stdev(b.values) == 0:  # no spread at all: the t statistic is undefined
        return 1.0 if fmean(a.values) == fmean(b.values) else 0.0
    return float(ttest_ind(a.values, b.values, equal_var=True).pvalue)


@dataclass
class Choice:
    """The winner, the two numbers the gain compares, and how they were chosen (`selection`)."""

    best: TrialRecord | None
    best_value: float | None
    baseline_value: float | None
    selection: dict


def choose_on_confirmation(task: Task, ranked: list[Finalist]) -> Choice:
    """The first of the ranking, compared with the baseline's own re-measurements."""
    winner = ranked[0] if ranked[0].qualified else None
    baseline = next((f for f in ranked if f.record.baseline and f.qualified), None)
    within_noise, p_value, noise = noise_verdict(ranked)
    why = (f"Chosen on the mean of each finalist's re-measurements ({task.search.confirm_repeats} each, run in "
           f"turns); one that failed or broke a hard SLO disqualifies its config." if winner else
           "No winner: every finalist failed or broke a hard SLO in a re-measurement.")
    gain_p = difference_p(winner, baseline) if winner and baseline and winner is not baseline else None
    return Choice(winner and winner.record, winner and winner.mean, baseline and baseline.mean,
                  {"chosen_on": "confirmation", "why": why, "within_noise": within_noise, "p_value": p_value,
                   "noise": noise, "gain_within_noise": None if gain_p is None else gain_p >= SIGNIFICANCE,
                   "gain_p_value": gain_p})


def choose_on_search(task: Task, records: list[TrialRecord], runs: list[TrialRecord] | None) -> Choice:
    """The best on the primary objective among the trials that met every SLO (soft ones included);
    if none did, the best score: each config on its one run in the search."""
    best = next(iter(candidates(task, records)), None)
    baseline = next((r for r in records if r.baseline and r.status == Outcome.COMPLETED), None)
    if not (task.search.confirm_top_k and task.search.confirm_repeats):
        reason = "confirmation is off (search.confirm_top_k or search.confirm_repeats is 0)"
    elif runs is None:
        reason = ("no confirmation runs were made (no config completed the search, the search is still going, "
                  "or the run ended before them)")
    else:
        reason = "no confirmation run finished (the run was interrupted)"
    return Choice(best, best and best.objective, baseline and baseline.objective,
                  {"chosen_on": "search", "why": f"Chosen on each config's single run in the search: {reason}.",
                   "within_noise": None, "p_value": None, "noise": None, "gain_within_noise": None,
                   "gain_p_value": None})


def summarize(task: Task, resolved: Resolved, records: list[TrialRecord], experiment_dir: str,
              confirmations: list[TrialRecord] | None = None) -> dict:
    """`confirmations`: the confirmation runs after the search (None: not made). When any of them
    counts, they alone choose the winner, rank the finalists and give the gain over the baseline;
    the search's own run of a finalist (picked for being high) is not counted."""
    metric = task.objective.metric
    finished = [r for r in records if r.status == Outcome.COMPLETED]
    ranked = rank_finalists(task, records, confirmations or [])
    confirmed = any(f.values or f.failed for f in ranked)
    choice = choose_on_confirmation(task, ranked) if confirmed else choose_on_search(task, records, confirmations)
    finalist_of = {f.record.trial_id: f for f in ranked} if confirmed else {}
    baseline = next((r for r in records if r.baseline), None)
    values = {r.experiment_id: objective_values(r, task.objective.metrics, task.benchmark.stage_weights)
              for r in finished}
    front = pareto_front(values) if task.objective.secondary else []

    def brief(record: TrialRecord) -> dict:
        result = {"experiment_id": record.experiment_id, "trial_id": record.trial_id,
                  "parameters": record.parameters, "objective_score": record.objective,
                  "command": shlex.join(launch_line(task, resolved, record.parameters, record.last))}
        finalist = finalist_of.get(record.trial_id)
        if finalist:
            result |= {"objective_score": finalist.mean, "search_objective": record.objective,
                       "runs": finalist.values, "failed_runs": finalist.failed, "spread": finalist.spread()}
        return result

    def pinned(best: dict, record: TrialRecord) -> dict:
        """The values the winner's engine chose on this machine, and its launch line with them
        pinned: the engine defaults win often, and their line alone would run other threads and
        slots (llama.cpp), another memory fraction and request cap (SGLang) on the next machine."""
        profile = profile_for(task.engine.name)
        log = resolved.storage.read_text(resolved.storage.path("trials", record.trial_id, "engine.log")) or ""
        chosen = profile.chosen_by_engine(log, profile.merged(task.engine.args, record.parameters))
        if not chosen:
            return best
        return best | {"engine_chose": chosen, "command_pinned": shlex.join(
            launch_line(task, resolved, record.parameters | chosen, record.last))}

    return {
        "task_name": task.name,
        "engine": task.engine.name,
        "objective": {"metric": metric, "direction": "maximize" if maximize(metric) else "minimize"},
        "slos": [{"metric": l.metric, "limit": l.limit, "hard": l.hard} for l in task.limits],
        "stages": [{"stage": i, "concurrency": c, "traffic_scenario": task.benchmark.traffic_scenario, "weight": w}
                   for i, (c, w) in enumerate(zip(task.benchmark.concurrency,
                                                  task.benchmark.stage_weights or [1.0] * len(task.benchmark.concurrency)), 1)],
        "total_experiments": len(records),
        "successful_experiments": sum(r.status in (Outcome.COMPLETED, Outcome.STOPPED_BY_SCHEDULER, Outcome.STOPPED_BY_BUDGET, Outcome.INTERRUPTED) and bool(r.stages)
                                      for r in records),
        "interrupted": any(not r.ended for r in records),
        "in_progress": False,  # True in the files rewritten after each trial while the run goes on
        "stopped_because": None,
        "best_result": pinned(brief(choice.best), choice.best) if choice.best else None,
        "baseline": brief(baseline) | {"status": baseline.status} if baseline else None,
        "gain_over_baseline": (gain(choice.best_value, choice.baseline_value, metric)
                               if choice.best and choice.baseline_value is not None else None),
        "selection": choice.selection,
        "confirmation": [{"rank": rank, "experiment_id": f.record.experiment_id, "trial_id": f.record.trial_id,
                          "parameters": f.record.parameters, "baseline": f.record.baseline,
                          "search_objective": f.record.objective, "runs": f.values, "failed_runs": f.failed,
                          "mean": f.mean, "spread": f.spread(), "metrics": f.metrics(task.benchmark.stage_weights),
                          "met_every_slo": f.met_every_slo,
                          "qualified": f.qualified} for rank, f in enumerate(ranked, 1)] if confirmed else [],
        "objectives": task.objective.metrics,
        "pareto_front": [{"experiment_id": key, "parameters": next(r.parameters for r in finished
                                                                   if r.experiment_id == key), **values[key]}
                         for key in front],
        "all_results": [{
            "experiment_id": r.experiment_id,
            "trial_id": r.trial_id,
            "baseline": r.baseline,
            "parameters": r.parameters,
            "status": r.status,
            "objective_score": r.objective,
            "stages_completed": len(r.stages),
            "objectives": values.get(r.experiment_id),
            "stages": r.stages,
            "infeasible_because": r.last.get("violation"),
            "slos_met": r.last.get("slos_met"),
            "error": r.error,
            "ray_failures": r.ray_failures,
        } for r in records],
        # How the load generator reached the engines ("port-forward": latencies include the tunnel).
        "measured_via": sorted({r.last["measured_via"] for r in records if r.last.get("measured_via")}),
        "ray_experiment_dir": experiment_dir,
        "trial_files": resolved.storage.where("trials"),  # each trial's folder: <trial_files>/<trial_id>
    }


def write(results_dir: Path, summary: dict) -> None:
    """results.json, trials.csv, and best_command.txt and pareto.csv when there is a winner or a
    front, each replaced atomically; one of those two left from an earlier write that no longer
    applies (a resumed run) is removed, so the folder never shows a winner the summary has not."""
    results_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(results_dir / "results.json", json.dumps(summary, indent=2, default=str) + "\n")
    _atomic_write(results_dir / "trials.csv", trials_csv(summary))
    best = summary.get("best_result")
    optional = {"best_command.txt": best["command"] + "\n" if best else None,
                "best.json": json.dumps(best_json(summary), indent=2, default=str) + "\n" if best else None,
                "pareto.csv": pareto_csv(summary) if summary.get("pareto_front") else None}
    for name, text in optional.items():
        if text is None:
            (results_dir / name).unlink(missing_ok=True)
        else:
            _atomic_write(results_dir / name, text)


WINNER_MANIFESTS = ("best_inferenceservice.yaml",)  # a backend's export of the winner (cluster/backend.py)
RESULT_FILES = ("results.json", "trials.csv", "best_command.txt", "best.json", "best_inferenceservice.yaml",
                "pareto.csv", "index.html")


def best_json(summary: dict) -> dict:
    """The winner to hand over: its parameters, its objective (with the spread of its
    re-measurements), every metric as measured where the winner was chosen (the mean over its
    re-measurements; without them, over its stages in the search), and its launch line."""
    best = summary["best_result"]
    trial = next(t for t in summary["all_results"] if t["experiment_id"] == best["experiment_id"])
    confirmed = next((c for c in summary.get("confirmation") or [] if c["experiment_id"] == best["experiment_id"]), {})
    remeasured = confirmed.get("metrics")  # absent in older versions' results.json
    where = (f"the winner's {len(best['runs'])} re-measurements, each over its stages" if remeasured
             else "the winner's stages in the search")
    # The measurements (not the stage's settings: its concurrency, request count, duration), each
    # weighted over the stages as the objective is, so the objective's own metric reads the same here.
    names = sorted(name for name in METRICS if any(stage.get(name) is not None for stage in trial["stages"]))
    weights = [stage.get("weight", 1.0) for stage in summary["stages"]]  # results of 0.3 have no weight

    def mean(name: str) -> float:
        pairs = [(w, stage[name]) for w, stage in zip(weights, trial["stages"]) if stage.get(name) is not None]
        return sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)

    return {
        "task": summary["task_name"], "engine": summary["engine"], "parameters": best["parameters"],
        "baseline": trial["baseline"],
        "objective": {"metric": summary["objective"]["metric"], "direction": summary["objective"]["direction"],
                      "value": best["objective_score"], "runs": best.get("runs"), "spread": best.get("spread"),
                      "gain_over_baseline": summary.get("gain_over_baseline"),
                      "chosen_on": (summary.get("selection") or {}).get("chosen_on")},
        # The numbers the objective's value comes from: with it re-measured, those runs' (the
        # search's run of the winner was picked for being high); the search's run's beside them.
        "metrics": remeasured or {name: mean(name) for name in names},
        "metrics_are": f"means over {where} (concurrency "
                       + ", ".join(str(stage["concurrency"]) for stage in summary["stages"]) + ")"
                       + ("" if len(set(weights)) == 1 else ", weighted " + ":".join(f"{w:g}" for w in weights)),
        "metrics_in_search": {name: mean(name) for name in names},
        "slos": summary["slos"],
        "measured_via": summary.get("measured_via", []),
        "command": best["command"],
        **{key: best[key] for key in ("engine_chose", "command_pinned") if key in best},
    }


def files_in(results_dir: Path) -> list[str]:
    """The result files a run left in `results_dir`, for its closing line."""
    return [name for name in RESULT_FILES if (results_dir / name).is_file()]


def pareto_csv(summary: dict) -> str:
    names = sorted({name for row in summary["pareto_front"] for name in row["parameters"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["experiment_id", *summary["objectives"], *names])
    for row in summary["pareto_front"]:
        writer.writerow([row["experiment_id"], *[row[m] for m in summary["objectives"]],
                         *[row["parameters"].get(name) for name in names]])
    return buffer.getvalue()


def trials_csv(summary: dict) -> str:
    names = sorted({name for row in summary["all_results"] for name in row["parameters"]})
    # The winner is chosen on the re-measurements, not on the search's own run (objective_score):
    # each finalist's rank and mean there are in its row, so that a sort by them finds the winner.
    confirmed = {entry["experiment_id"]: entry for entry in summary.get("confirmation") or []}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["experiment_id", "trial_id", "baseline", "status", "stages_completed",
                     "objective_score", "confirmation_rank", "confirmation_mean", "confirmation_runs",
                     *names, "infeasible_because", "error"])
    for row in summary["all_results"]:
        entry = confirmed.get(row["experiment_id"], {})
        writer.writerow([row["experiment_id"], row["trial_id"], row["baseline"], row["status"],
                         row["stages_completed"], row["objective_score"],
                         entry.get("rank"), entry.get("mean"), " ".join(map(str, entry.get("runs", []))),
                         *[row["parameters"].get(name) for name in names],
                         row["infeasible_because"], row["error"]])
    return buffer.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def table(summary: dict) -> str:
    """The summary a run prints: one line per trial, then the best config and its gain."""
    metric = summary["objective"]["metric"]
    rows = summary["all_results"]
    names = sorted({name for row in rows for name in row["parameters"]})
    header = ["#", "status", "stages", metric, *names]
    lines = [header]
    for row in rows:
        value = row["objective_score"]
        params = ["default" if row["baseline"] else fmt(row["parameters"].get(name)) for name in names]
        lines.append([str(row["experiment_id"]), row["status"], str(row["stages_completed"]),
                      "-" if value is None else figure(value), *params])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines)
    if summary.get("in_progress"):
        text = "The run is still going, or was cut off: the trials finished so far.\n" + text
    selection = summary.get("selection") or {}  # absent in the results.json of older versions
    if selection.get("chosen_on") == "confirmation":
        text += "\n\n" + confirmation_table(summary)
    best = summary["best_result"]
    if best is None:
        why = selection["why"] if selection.get("chosen_on") == "confirmation" else \
            "No trial completed every stage; see results.json for the errors."
        return text + "\n" + why
    text += f"\n\nBest: experiment {best['experiment_id']}  {metric} = {figure(best['objective_score'])}"
    if best.get("runs"):
        text += f" (mean of {len(best['runs'])} re-measurements)"
    if best["experiment_id"] == (summary["baseline"] or {}).get("experiment_id"):
        text += "  (the engine defaults: no tuned config beat them)"
    elif summary["gain_over_baseline"] is not None:
        alike = ", re-measured alike" if summary["baseline"].get("runs") else ""
        p_value = selection.get("gain_p_value")  # absent in older versions' results.json
        if selection.get("gain_within_noise"):
            alike += "; within noise" + (f": t-test p = {p_text(p_value)}" if p_value is not None else "")
        elif p_value is not None:  # told apart, and by how much evidence: p = 0.045 is not p = 0.0001
            alike += f"; t-test p = {p_text(p_value)}"
        text += f"  ({summary['gain_over_baseline']:+.1%} vs. engine defaults " \
                f"{figure(summary['baseline']['objective_score'])}{alike})"
    if selection.get("chosen_on") == "search":
        text += f"\n{selection['why']}"
    text += f"\nLaunch: {best['command']}"
    if best.get("command_pinned"):
        chose = " ".join(f"{flag}={value}" for flag, value in best["engine_chose"].items())
        text += (f"\n  {summary['engine']} chose {chose} itself where it ran (its log); with them pinned, to run "
                 f"the same elsewhere:\n  {best['command_pinned']}")
    if "port-forward" in summary.get("measured_via", []):
        text += ("\nMeasured through a port-forward: TTFT and ITL include the Kubernetes API server's tunnel "
                 "(compare configs with each other, not with in-cluster numbers; run the driver in the cluster "
                 "for those)")
    if summary.get("pareto_front"):
        objectives = summary["objectives"]
        text += f"\n\nPareto front over {', '.join(objectives)} (pareto.csv):"
        for row in summary["pareto_front"]:
            text += f"\n  experiment {row['experiment_id']}: " + ", ".join(f"{m} {figure(row[m])}" for m in objectives)
    return text


def confirmation_table(summary: dict) -> str:
    """The finalists as ranked on their re-measurements: the ranking the winner comes from."""
    lines = ["Re-measured after the search, in turns (the search's own runs above not counted):"]
    for row in summary["confirmation"]:
        name = f"{row['rank']}. experiment {row['experiment_id']}"
        if not row["qualified"]:
            what = (f"disqualified: {row['failed_runs']} of {row['failed_runs'] + len(row['runs'])} runs failed "
                    f"or broke a hard SLO" if row["failed_runs"] else "not re-measured (the run was interrupted)")
        else:
            spread = row["spread"]
            what = (f"{figure(row['mean'])}  (mean of {len(row['runs'])}: {figure(spread['min'])} to {figure(spread['max'])}, "
                    f"stdev {spread['stdev']:.3g})" if spread["stdev"] is not None else
                    f"{figure(row['mean'])}  (one run)")
            what += "" if row["met_every_slo"] else "  a soft SLO broken"
        lines.append(f"  {name:<18}{what}{'  engine defaults' if row['baseline'] else ''}")
    noise = summary["selection"]["noise"]
    return "\n".join(lines + [noise + "."])


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
