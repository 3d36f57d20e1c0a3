"""Results: Pareto front over several objectives, the recommended point, files written."""

import csv
import dataclasses
import json

import pytest

from pyarrow.fs import LocalFileSystem

from llm_autotuner.cluster.storage import Storage
from llm_autotuner.trainables.trial import Resolved
from llm_autotuner.tuner.results import TrialRecord, p_text, pareto_front, summarize, write
from llm_autotuner.task import parse_task

RESOLVED = Resolved("llama-server", "/models/m.gguf", "m", "/tok", Storage(LocalFileSystem(), "/tmp/t", "/tmp/t"), "run")


def task(**objective):
    return parse_task({"name": "t", "model": {"path": "/models/m.gguf"}, "engine": {"name": "llama.cpp"},
                       "search_space": {"parallel": [1, 2, 4, 8]}, "benchmark": {"concurrency": [1, 4]},
                       "objective": {"metric": "output_throughput"} | objective,
                       "slos": {"ttft_p90": {"limit": 1.0, "hard": False}}})


def record(number, parallel, tps, ttft, met=True):
    stages = [{"concurrency": c, "output_throughput": tps, "ttft_p90": ttft} for c in (1, 4)]
    reports = [{"stage": i + 1, "score": tps, "objective": tps, "violation": None, "error": None,
                "slos_met": {"ttft_p90": met}, "metrics": stage, "outcome": "completed" if i == 1 else None}
               for i, stage in enumerate(stages)]
    return TrialRecord(f"id{number}", {"parallel": parallel}, False, reports, experiment_id=number)


def test_pareto_front_keeps_the_non_dominated_points():
    points = {1: {"output_throughput": 100, "ttft_p90": 0.5},   # fast answers
              2: {"output_throughput": 150, "ttft_p90": 0.9},   # more throughput
              3: {"output_throughput": 120, "ttft_p90": 1.0},   # dominated by 2
              4: {"output_throughput": 90, "ttft_p90": 0.5}}    # dominated by 1
    assert pareto_front(points) == [1, 2]


def test_summary_lists_the_front_and_recommends_the_best_that_met_every_slo(tmp_path):
    records = [record(1, 1, 100, 0.5), record(2, 2, 150, 0.9), record(3, 4, 120, 1.0),
               record(4, 8, 200, 1.5, met=False)]
    summary = summarize(task(secondary=["ttft_p90"]), RESOLVED, records, "unused")
    assert [row["experiment_id"] for row in summary["pareto_front"]] == [1, 2, 4]
    assert summary["best_result"]["experiment_id"] == 2  # 4 is faster but broke the soft TTFT limit
    write(tmp_path, summary)
    rows = list(csv.DictReader((tmp_path / "pareto.csv").open()))
    assert [row["experiment_id"] for row in rows] == ["1", "2", "4"]
    assert set(rows[0]) == {"experiment_id", "output_throughput", "ttft_p90", "parallel"}


def test_no_front_without_secondary_objectives(tmp_path):
    summary = summarize(task(), RESOLVED, [record(1, 1, 100, 0.5)], "unused")
    assert summary["pareto_front"] == []
    write(tmp_path, summary)
    assert not (tmp_path / "pareto.csv").exists()


def latency_record(number, parallel, ttfts):
    """A trial on the ttft_p90 objective that ran len(ttfts) of the task's 2 stages."""
    reports = [{"stage": i + 1, "score": -v, "objective": sum(ttfts[:i + 1]) / (i + 1), "violation": None,
                "error": None, "slos_met": {"ttft_p90": True}, "outcome": "completed" if i == 1 else None,
                "metrics": {"concurrency": (1, 4)[i], "output_throughput": 50.0, "ttft_p90": v}}
               for i, v in enumerate(ttfts)]
    return TrialRecord(f"id{number}", {"parallel": parallel}, False, reports, experiment_id=number)


def test_the_report_ranks_trials_cut_short_after_those_that_ran_every_stage(tmp_path):
    # Trial 2 was cut after its low-load stage: its 0.05 s is not comparable with full runs' means.
    from llm_autotuner.tuner.report import write_report

    records = [latency_record(1, 1, [0.3, 0.5]), latency_record(2, 2, [0.05]), latency_record(3, 4, [0.2, 0.4])]
    summary = summarize(task(metric="ttft_p90"), RESOLVED, records, "unused")
    assert summary["best_result"]["experiment_id"] == 3
    write(tmp_path, summary)
    page = write_report(tmp_path).read_text()
    table = page[page.index('<table id="trials">'):]
    order = [int(cell.split("<td>")[1].split("</td>")[0]) for cell in table.split("<tr")[2:5]]
    assert order == [3, 1, 2]
    cut_short = table.split("<tr")[4]
    assert "0.05000 (its first 1 of 2 stages: not comparable with full runs)" in cut_short
    assert "behind the other trials at stage 1, where the scheduler (ASHA) compared them" in cut_short
    assert "not comparable" not in table.split("<tr")[2]


def test_best_json_metrics_are_weighted_as_the_objective_and_only_measurements(tmp_path):
    import json

    spec = {"name": "t", "model": {"path": "/models/m.gguf"}, "engine": {"name": "llama.cpp"},
            "search_space": {"parallel": [1, 2]}, "benchmark": {"concurrency": [1, 4], "stage_weights": [1, 3]},
            "objective": {"metric": "output_throughput"}}
    stages = [{"concurrency": 1, "num_requests": 8, "output_throughput": 100.0, "ttft_p90": 0.2},
              {"concurrency": 4, "num_requests": 8, "output_throughput": 200.0, "ttft_p90": 0.6}]
    reports = [{"stage": i + 1, "score": 0.0, "objective": 175.0, "violation": None, "error": None, "slos_met": {},
                "metrics": stage, "outcome": "completed" if i == 1 else None} for i, stage in enumerate(stages)]
    summary = summarize(parse_task(spec), RESOLVED, [TrialRecord("id1", {"parallel": 2}, False, reports, experiment_id=1)],
                        "unused")
    write(tmp_path, summary)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["metrics"]["output_throughput"] == 175.0  # (100 + 3 x 200) / 4, as the objective weighs it
    assert best["metrics"]["ttft_p90"] == pytest.approx(0.5)
    assert "concurrency" not in best["metrics"] and "num_requests" not in best["metrics"]
    assert best["metrics_are"].endswith("weighted 1:3")


def test_the_launch_line_carries_the_engine_environment_the_trials_ran_with(tmp_path):
    spec = {"name": "t", "model": {"path": "/models/m.gguf"},
            "engine": {"name": "llama.cpp", "env": {"LLAMA_ARG_N_GPU_LAYERS": "0", "OMP_NUM_THREADS": "1"}},
            "search_space": {"parallel": [1, 2]}, "benchmark": {"concurrency": [1, 4]}}
    summary = summarize(parse_task(spec), RESOLVED, [record(1, 2, 100, 0.5)], "unused")
    write(tmp_path, summary)
    line = (tmp_path / "best_command.txt").read_text().split()
    assert line[:4] == ["env", "LLAMA_ARG_N_GPU_LAYERS=0", "OMP_NUM_THREADS=1", "llama-server"]
    assert "--parallel" in line


def test_the_tradeoff_plots_front_is_of_trials_that_ran_every_stage():
    from llm_autotuner.tuner.plots import tradeoff_points

    # Trial 2, cut after its low-load stage, has the lowest mean latency of all: it is drawn, but a
    # front through it would promise a trade-off no full run showed.
    records = [latency_record(1, 1, [0.3, 0.5]), latency_record(2, 2, [0.05]), latency_record(3, 4, [0.2, 0.4])]
    summary = summarize(task(), RESOLVED, records, "unused")  # its soft ttft_p90 SLO: the latency axis
    points, front = tradeoff_points(summary)
    assert set(points) == {1, 2, 3} and front == [3]


def test_the_launch_line_names_the_build_the_winner_ran_on_its_ray_node(tmp_path):
    # On a Ray cluster each node proves its own build (CPU flags differ between machines): the line
    # names the binary of the node the winner ran on, not the driver's.
    resolved = dataclasses.replace(RESOLVED, node_executables={"node-a": "/a/llama-server", "node-b": "/b/llama-server"})
    winner, other = record(1, 2, 200, 0.5), record(2, 1, 100, 0.5)
    for run, node in ((winner, "node-b"), (other, "node-a")):
        for report in run.reports:
            report["node"] = node
    write(tmp_path, summarize(task(), resolved, [winner, other], "unused"))
    assert (tmp_path / "best_command.txt").read_text().split()[0] == "/b/llama-server"
    # A node that joined during the run proved its build in the winner's trial, which reports it.
    winner.reports[-1] |= {"node": "node-c", "executable": "/c/llama-server"}
    write(tmp_path, summarize(task(), resolved, [winner, other], "unused"))
    assert (tmp_path / "best_command.txt").read_text().split()[0] == "/c/llama-server"


def test_the_stage_plot_has_a_legend_when_no_trial_finished(tmp_path, recwarn):
    # The time budget cut the only trial after its first stage: no winner, no baseline. The plot
    # still says what its line is (matplotlib warned "No artists with labels" into the run's output).
    from llm_autotuner.tuner.plots import write_stage_plot

    cut = latency_record(1, 1, [0.3])
    cut.reports[-1]["outcome"], cut.ended, cut.cut_by_run = None, True, True
    summary = summarize(task(), RESOLVED, [cut], "unused")
    assert summary["best_result"] is None and summary["all_results"][0]["status"] == "stopped-by-budget"
    assert write_stage_plot(summary, tmp_path / "stages.png").stat().st_size > 0
    assert [str(w.message) for w in recwarn] == []


def test_a_trial_ray_errored_after_a_stage_is_failed_and_the_results_are_still_written(tmp_path):
    """An exception the trial did not report (a full disk while it marked its timeline) makes Ray
    mark it ERROR after its first stage: it is `failed`, and results.json is written all the same."""
    first = record(1, 2, 80.0, 0.5)
    first.reports = first.reports[:1]  # its stage 1 report: "outcome": None
    errored = dataclasses.replace(first, ray_error="OSError: [Errno 28] No space left on device")
    assert errored.status.value == "failed"
    summary = summarize(task(), RESOLVED, [errored, record(2, 4, 90.0, 0.5)], str(tmp_path))
    write(tmp_path, summary)
    assert (tmp_path / "results.json").is_file()


def test_the_best_so_far_against_time_never_gets_worse_when_trials_overlap():
    """Trial 2 started after trial 1 but ended first: the curve against time follows the order of
    the ends (100 at 5 min, then 150 at 10 min), never showing the best dropping."""
    from llm_autotuner.tuner.plots import best_over_time

    trials = [{"experiment_id": 1, "objective_score": 150.0}, {"experiment_id": 2, "objective_score": 100.0}]
    curve = best_over_time(trials, {1: 600.0, 2: 300.0}, lambda a, b: a > b)
    assert curve == [(300.0, 100.0), (600.0, 150.0)]
    assert [best for _, best in curve] == sorted(best for _, best in curve)


def test_the_tradeoff_plot_weighs_the_stages_as_the_objective_and_pareto_csv_do(tmp_path):
    from llm_autotuner.tuner.plots import tradeoff_points

    spec = {"name": "t", "model": {"path": "/models/m.gguf"}, "engine": {"name": "llama.cpp"},
            "search_space": {"parallel": [1, 2]}, "benchmark": {"concurrency": [1, 4], "stage_weights": [1, 3]},
            "objective": {"metric": "output_throughput", "secondary": ["e2e_p90"]}}
    stages = [{"concurrency": 1, "output_throughput": 100.0, "e2e_p90": 1.0},
              {"concurrency": 4, "output_throughput": 200.0, "e2e_p90": 3.0}]
    reports = [{"stage": i + 1, "score": 0.0, "objective": 175.0, "violation": None, "error": None, "slos_met": {},
                "metrics": stage, "outcome": "completed" if i == 1 else None} for i, stage in enumerate(stages)]
    summary = summarize(parse_task(spec), RESOLVED, [TrialRecord("id1", {"parallel": 2}, False, reports, experiment_id=1)],
                        "unused")
    points, _ = tradeoff_points(summary)
    assert points[1] == (175.0, 2.5)  # (100 + 3 x 200) / 4 and (1 + 3 x 3) / 4, not the plain means 150 and 2
    row = summary["pareto_front"][0]
    assert (row["output_throughput"], row["e2e_p90"]) == points[1]


def test_the_reports_table_ranks_the_re_measured_configs_as_the_headline_does(tmp_path):
    # Trial 3 had the luckiest single run in the search, but trial 2 won on the mean of the
    # re-measurements: the page's "best first" must not put 3 above the winner it names.
    from llm_autotuner.tuner.report import write_report

    records = [record(1, 1, 100, 0.5), record(2, 2, 150, 0.5), record(3, 4, 160, 0.5)]
    for r in records:
        r.baseline = r.experiment_id == 1
    def run(number, tps):
        return dataclasses.replace(record(number, {1: 1, 2: 2, 3: 4}[number], tps, 0.5),
                                   trial_id=f"c{number}-{tps}", baseline=number == 1)
    confirmations = [run(2, 152.0), run(3, 140.0), run(1, 101.0), run(2, 148.0), run(3, 142.0), run(1, 99.0)]
    summary = summarize(task(), RESOLVED, records, "unused", confirmations)
    assert summary["best_result"]["experiment_id"] == 2
    write(tmp_path, summary)
    page = write_report(tmp_path).read_text()
    table = page[page.index('<table id="trials">'):page.index("</table>")]
    rows = [row.split("<td>")[1:] for row in table.split("<tr")[2:]]
    assert [int(cells[0].split("<")[0]) for cells in rows] == [2, 3, 1]
    assert "re-measured" in table and rows[0][3].startswith("150.0 (mean of 2")
    assert rows[0][4].startswith("150.0") and rows[1][4].startswith("160.0")  # the search's runs, said to be so


def test_the_report_names_the_engine_defaults_when_they_win_and_the_gains_p_value_when_a_config_does(tmp_path):
    from llm_autotuner.tuner.report import compare, write_report

    def trial(number, tps, trial_id=None):  # 1: the baseline, every flag left to the engine
        made = record(number, None if number == 1 else number, tps, 0.5)
        return dataclasses.replace(made, trial_id=trial_id or made.trial_id, baseline=number == 1)

    records = [trial(1, 100), trial(2, 110), trial(3, 105)]
    confirmations = [trial(n, tps, f"c{n}-{tps}") for n, tps in [(2, 90.0), (3, 91.0), (1, 120.0),
                                                                  (2, 92.0), (3, 89.0), (1, 118.0)]]
    summary = summarize(task(), RESOLVED, records, "unused", confirmations)
    assert summary["best_result"]["experiment_id"] == 1
    write(tmp_path, summary)
    winner = write_report(tmp_path).read_text().split('id="winner">')[1].split("</p>")[0]
    assert "Experiment 1:\nthe engine defaults" in winner and "None" not in winner, winner
    assert "Winner: the same config in both (the engine defaults)" in compare(tmp_path, tmp_path)
    confirmations = [trial(n, tps, f"c{n}-{tps}") for n, tps in [(2, 130.0), (3, 91.0), (1, 100.0),
                                                                  (2, 128.0), (3, 89.0), (1, 99.0)]]
    summary = summarize(task(), RESOLVED, records, "unused", confirmations)
    write(tmp_path, summary)
    winner = write_report(tmp_path).read_text().split('id="winner">')[1].split("</p>")[0]
    assert f"(t-test p = {p_text(summary['selection']['gain_p_value'])})" in winner, winner


def test_the_report_and_the_comparison_print_measurements_as_the_run_does(tmp_path):
    # 4 significant digits with the zeros kept (71.00 beside 73.27, not "71"), whole units from
    # 1000 (12346, not 1.235e+04), as llm_autotuner.metrics.figure prints them in the run's summary.
    from llm_autotuner.tuner.report import compare, write_report

    first, second = tmp_path / "a", tmp_path / "b"
    for folder, values in ((first, (71.0, 73.27)), (second, (12345.6, 9876.5))):
        records = [record(1, 1, values[0], 0.5), record(2, 2, values[1], 0.5)]
        summary = summarize(task(), RESOLVED, records, "unused", [])
        folder.mkdir()
        write(folder, summary)
    page = write_report(first).read_text()
    assert "71.00" in page and "73.27" in page
    text = compare(first, second)
    assert '{"parallel": 1}' in text and " 71.00 " in text and " 12346 " in text and "e+" not in text, text


def test_a_p_value_is_never_printed_on_the_wrong_side_of_the_cut():
    from llm_autotuner.tuner.results import SIGNIFICANCE, p_text

    assert SIGNIFICANCE == 0.05
    assert p_text(0.0496) == "0.0496" and p_text(0.0504) == "0.0504"  # both "0.05" at two digits
    assert p_text(0.3) == "0.3" and p_text(0.0012) == "0.0012"
    assert p_text(0.04999999999) == "< 0.05"


def test_a_trial_interrupted_after_measuring_stages_counts_as_measured():
    interrupted = record(2, 2, 150, 0.5)
    interrupted.reports = interrupted.reports[:1]
    interrupted.__post_init__()
    interrupted.ended = False
    summary = summarize(task(), RESOLVED, [record(1, 1, 100, 0.5), interrupted], "unused")
    assert [t["status"] for t in summary["all_results"]] == ["completed", "interrupted"]
    assert summary["successful_experiments"] == 2


def test_plot_axes_name_each_metrics_unit():
    from llm_autotuner.tuner.plots import with_unit

    assert with_unit("output_throughput") == "output_throughput (tok/s)"
    assert with_unit("e2e_p90") == "e2e_p90 (s)"
    assert with_unit("error_rate") == "error_rate"  # a fraction: no unit


def test_the_parameter_plot_draws_the_numbers_the_winner_was_chosen_on(tmp_path):
    """The defaults' search run (90) was low; re-measured they are at 100: the dashed line is there,
    and each finalist has its re-measured mean beside its search run."""
    from llm_autotuner.tuner.plots import chosen_on, write_parameter_plot

    records = [record(1, None, 90, 0.5), record(2, 2, 150, 0.5), record(3, 4, 160, 0.5)]
    records[0].baseline = True
    confirmations = [dataclasses.replace(record(n, p, tps, 0.5), trial_id=f"c{n}-{tps}", baseline=n == 1)
                     for n, p, tps in [(2, 2, 152.0), (3, 4, 140.0), (1, None, 101.0),
                                       (3, 4, 142.0), (1, None, 99.0), (2, 2, 148.0)]]
    summary = json.loads(json.dumps(summarize(task(), RESOLVED, records, "unused", confirmations), default=str))
    assert chosen_on(summary) == ({2: 150.0, 3: 141.0, 1: 100.0}, (1, 100.0))
    assert write_parameter_plot(summary, tmp_path / "parameters.png").stat().st_size > 0
    # Without re-measurements the search's own numbers are all there is.
    summary["confirmation"] = []
    assert chosen_on(summary) == ({}, (1, 90))


def test_when_the_engine_defaults_win_the_values_the_engine_chose_are_pinned_in_a_second_launch_line(tmp_path):
    from llm_autotuner.tuner.report import write_report
    from llm_autotuner.tuner.results import table

    storage = tmp_path / "storage"
    resolved = dataclasses.replace(RESOLVED, storage=Storage(LocalFileSystem(), str(storage), str(storage)))
    (storage / "trials" / "id1").mkdir(parents=True)
    # The lines llama-server logs at its default verbosity (tests/cluster/test_engines.py reads them from it).
    (storage / "trials" / "id1" / "engine.log").write_text(
        "0.00.194.254 I cmn          init: llama threadpool init, n_threads = 2\n"
        "0.00.250.387 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 4096, kv_unified = 'true'\n")
    defaults = dataclasses.replace(record(1, None, 120, 0.5), baseline=True)
    summary = summarize(task(), resolved, [defaults, record(2, 8, 100, 0.5)], "unused")
    best = summary["best_result"]
    assert best["experiment_id"] == 1 and best["engine_chose"] == {"threads": 2, "parallel": 4}
    assert "--parallel" not in best["command"].split()  # as it ran: left to the engine
    pinned = best["command_pinned"].split()
    assert pinned[pinned.index("--threads") + 1] == "2" and pinned[pinned.index("--parallel") + 1] == "4"
    assert f"llama.cpp chose threads=2 parallel=4 itself where it ran (its log)" in table(summary)
    assert best["command_pinned"] in table(summary)
    write(tmp_path, summary)
    assert json.loads((tmp_path / "best.json").read_text())["command_pinned"] == best["command_pinned"]
    assert (tmp_path / "best_command.txt").read_text() == best["command"] + "\n"  # the line as it ran
    assert "chose threads=2 parallel=4 itself" in write_report(tmp_path).read_text()
    # A tuned winner sets its own: only what it leaves to the engine is pinned (here: threads).
    (storage / "trials" / "id2").mkdir()
    (storage / "trials" / "id2" / "engine.log").write_text((storage / "trials" / "id1" / "engine.log").read_text())
    tuned = summarize(task(), resolved, [record(1, None, 90, 0.5), record(2, 8, 100, 0.5)], "unused")["best_result"]
    assert tuned["experiment_id"] == 2 and tuned["engine_chose"] == {"threads": 2}
