"""What of Ray Tune's own logging reaches the user, through the filters the driver installs."""

import io
import logging

from llm_autotuner.errors import BriefSyncFailures


def test_a_failed_copy_of_the_experiment_state_is_one_line_not_a_traceback():
    # The logger and the message of ray/tune/execution/experiment_state.py (Ray 2.60), whose copy
    # races with the searcher state it is replacing at a Ctrl-C (seen under load).
    logger = logging.getLogger("ray.tune.execution.experiment_state")
    shown = io.StringIO()
    handler = logging.StreamHandler(shown)
    logger.addHandler(handler)
    logger.addFilter(BriefSyncFailures())
    try:
        try:
            raise FileNotFoundError(2, "Failed to open local file '/tmp/ray/x/.tmp-searcher-state.pkl'")
        except FileNotFoundError:
            logger.error("Saving experiment state to storage at '/results/tune' failed with exception: ",
                         exc_info=True)
    finally:
        logger.removeHandler(handler)
        logger.filters.clear()
    assert shown.getvalue().count("\n") == 1 and "Traceback" not in shown.getvalue()
    assert shown.getvalue().startswith("Saving experiment state to storage at '/results/tune' failed with "
                                       "exception: FileNotFoundError: [Errno 2] Failed to open local file")
