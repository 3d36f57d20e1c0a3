"""The patience stopper ends the search after k finished trials in a row without a new best."""

from types import SimpleNamespace

from tuner.search import NoImprovementStopper


def finished(score, baseline=False):
    return SimpleNamespace(config={"__baseline__": True} if baseline else {"parallel": 1},
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
