"""genai-bench, with a line per request: when it was sent, when its answer ended, how many output
tokens it asked for and got. Run as `python -m llm_autotuner.trainables.timed_genai_bench ARGS`
(ARGS as for `genai-bench`), with REQUEST_LOG_ENV naming the file to append to.

Why: genai-bench 0.0.5 keeps no time of day per request, and its run duration ends at its next
once-a-second check, so neither the window a stage's requests really took (first sent to last
answered, failed ones included) nor an answer cut short can be read from its result files.
This runs in genai-bench's own process (importing it monkey-patches the process with gevent),
never in ours. tests/test_dependencies.py fails loudly if the hooks below are gone.
"""

from __future__ import annotations

import json
import os
import sys
import time

REQUEST_LOG_ENV = "AUTOTUNER_REQUEST_LOG"


def install(log) -> None:
    """Record every request genai-bench's users make into `log` (a line-buffered text file)."""
    from genai_bench.metrics.aggregated_metrics_collector import AggregatedMetricsCollector
    from genai_bench.user.base_user import BaseUser

    stage = {"concurrency": None}
    set_run_metadata, sample, collect_metrics = (AggregatedMetricsCollector.set_run_metadata, BaseUser.sample,
                                                 BaseUser.collect_metrics)

    def on_stage(self, iteration, *args, **kwargs):
        stage["concurrency"] = iteration  # the stage's concurrency: its file's name carries the same
        return set_run_metadata(self, iteration, *args, **kwargs)

    def on_sample(self):
        request = sample(self)
        # One user sends one request at a time: what it sampled last is what it sends next.
        self._autotuner_request = (time.monotonic(), getattr(request, "max_tokens", None))
        return request

    def on_answer(self, response, endpoint):
        sent, wanted = getattr(self, "_autotuner_request", (None, None))
        log.write(json.dumps({
            "concurrency": stage["concurrency"],
            "sent": response.start_time or sent,  # timed-out requests carry no times of their own
            "done": response.end_time or time.monotonic(),
            "status": response.status_code,
            "wanted_tokens": wanted,
            "output_tokens": getattr(response, "tokens_received", None),
        }) + "\n")
        return collect_metrics(self, response, endpoint)

    AggregatedMetricsCollector.set_run_metadata = on_stage
    BaseUser.sample = on_sample
    BaseUser.collect_metrics = on_answer


def main() -> None:
    from genai_bench.cli.cli import cli

    with open(os.environ[REQUEST_LOG_ENV], "a", buffering=1) as log:
        install(log)
        sys.argv[0] = "genai-bench"
        cli()


if __name__ == "__main__":
    main()
