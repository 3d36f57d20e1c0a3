"""The patience stopper ends the search after k finished trials in a row without a new best; the
failure guard ends it after k failed trials in a row, naming the likely cause."""

import time
from types import SimpleNamespace

import cloudpickle
from pyarrow.fs import LocalFileSystem
from ray.tune.stopper import CombinedStopper, TimeoutStopper

from llm_autotuner.cluster.storage import Storage
from llm_autotuner.tuner.interrupt import Interrupt, RunEnd
from llm_autotuner.tuner.search import FailureGuard, NoImprovementStopper


def finished(score, baseline=False):
    return SimpleNamespace(trial_id=f"t{score}", config={"__baseline__": True} if baseline else {"parallel": 1},
                           last_result={"score": score})


def test_stops_after_patience_trials_without_a_new_best():
    stopper = NoImprovementStopper(patience=2)
    for score, stop in [(10.0, False), (12.0, False), (11.0, False), (12.0, True)]:
        stopper.on_trial_complete(0, [], finished(score))
        assert stopper.stop_all() is stop
    assert stopper("any-trial", {"score": 1.0}) is False  # it never stops single trials


def test_the_baseline_and_new_bests_do_not_count_against_patience():
    stopper = NoImprovementStopper(patience=1)
    stopper.on_trial_complete(0, [], finished(5.0))
    stopper.on_trial_complete(0, [], finished(1.0, baseline=True))
    assert not stopper.stop_all()
    stopper.on_trial_error(0, [], finished(None))
    assert stopper.stop_all()  # a failed trial is no improvement


def ended(error=None):
    return SimpleNamespace(config={"parallel": 1}, last_result={"score": -1e9 if error else 5.0, "error": error})


def test_failure_guard_stops_after_k_failures_in_a_row_and_names_the_common_error():
    guard = FailureGuard(limit=3)
    bad_flag = "DeploymentError: engine exited with code 1 before it was ready: error: invalid argument: --x\nlog..."
    for trial, stop in [(ended(bad_flag), False), (ended(), False), (ended(bad_flag), False),
                        (ended(bad_flag), False), (ended(bad_flag), True)]:
        guard.on_trial_complete(0, [], trial)
        assert guard.stop_all() is stop
    assert guard.reason == ("stopped: the last 3 trials all failed with the same error, so the problem is likely "
                            "not the configs but the setup (engine, model, benchmark or cluster): "
                            "DeploymentError: engine exited with code 1 before it was ready: error: invalid argument: --x")


def test_failure_guard_with_mixed_errors_names_the_most_common_one():
    guard = FailureGuard(limit=3)
    for error in ["BenchmarkError: stage 1 timed out", "DeploymentError: out of memory", "DeploymentError: out of memory"]:
        guard.on_trial_complete(0, [], ended(error))
    assert guard.reason == ("stopped: the last 3 trials failed (search.max_consecutive_failures); the most common "
                            "error: DeploymentError: out of memory")
    assert FailureGuard(limit=3).reason is None


def test_failure_guard_stops_at_the_first_failure_no_config_can_avoid():
    guard = FailureGuard(limit=5)
    trial = SimpleNamespace(config={"parallel": 1}, last_result={
        "score": -1e9, "error": "DeploymentError: engine killed by SIGILL (illegal instruction) before it was ready",
        "setup_failure": "the engine fails at start whatever its tuned flags (also with engine.args only): x"})
    guard.on_trial_complete(0, [], trial)
    assert guard.stop_all()
    assert guard.reason == "stopped: the engine fails at start whatever its tuned flags (also with engine.args only): x"


def test_stoppers_saved_with_the_experiment_load_as_the_resumed_sessions_own():
    # Ray saves the stoppers in its experiment state and puts the saved ones back on --resume:
    # copies the resumed session's callbacks never update and its Ctrl-C never reaches.
    saved = cloudpickle.dumps(CombinedStopper(FailureGuard(3), NoImprovementStopper(4)))
    guard, patience = FailureGuard(3), NoImprovementStopper(4)  # the resumed session's
    guard.setup_failure = "the engine fails at start"
    restored = cloudpickle.loads(saved)
    assert list(restored._stoppers) == [guard, patience]
    assert restored.stop_all()  # the live guard's verdict


def test_whichever_stopper_ends_the_run_leaves_the_stop_for_its_trials(tmp_path):
    # Trials waiting on an engine or a stage look for the stop in the storage (trainables/trial.py):
    # the time budget and patience must leave it as a signal does.
    storage = Storage(LocalFileSystem(), str(tmp_path), str(tmp_path))
    interrupt = Interrupt(storage)
    run_end = RunEnd(storage, NoImprovementStopper(4), TimeoutStopper(0.5))
    assert not run_end.stop_all() and not storage.stop_requested()
    time.sleep(0.6)
    assert run_end.stop_all() and storage.stop_requested()
    # The confirmation runs come after the search's end: its stop is taken back for them...
    interrupt.clear_run_end()
    assert not storage.stop_requested()
    # ...but not a signal's.
    interrupt.requested = "SIGINT"
    interrupt.clear_run_end()
    assert storage.stop_requested()


def test_a_run_resumed_after_its_time_budget_ran_out_stops_its_trials_at_once(tmp_path):
    storage = Storage(LocalFileSystem(), str(tmp_path), str(tmp_path))
    run_end = RunEnd(storage, TimeoutStopper(0.5))
    run_end.stop_all()
    time.sleep(0.6)
    assert run_end.stop_all()
    saved = cloudpickle.dumps(run_end)  # Ray's experiment state
    Interrupt(storage)  # the resumed session's: it clears the first session's stop
    assert not storage.stop_requested()
    restored = cloudpickle.loads(saved)  # what Ray puts back on --resume
    assert restored.stop_all() and storage.stop_requested()
