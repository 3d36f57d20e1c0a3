"""genai-bench, with a line per request: when it was sent, when its answer ended, how many output
tokens it asked for and got. Run as `python -m llm_autotuner.trainables.timed_genai_bench ARGS`
(ARGS as for `genai-bench`), with REQUEST_LOG_ENV naming the file to append to.

Why: genai-bench 0.0.5 keeps no time of day per request, and its run duration ends at its next
once-a-second check, so neither the window a stage's requests really took (first sent to last
answered, failed ones included) nor an answer cut short can be read from its result files.
This runs in genai-bench's own process (importing it monkey-patches the process with gevent),
never in ours. tests/trainables/test_genai_bench_parsing.py fails loudly if the hooks below are gone.
"""

from __future__ import annotations

import json
import os
import sys
import time

REQUEST_LOG_ENV = "AUTOTUNER_REQUEST_LOG"


def install(log) -> None:
    """Record every request genai-bench counts into `log` (a line-buffered text file).

    The line is written where genai-bench adds the request to the stage it reports on
    (AggregatedMetricsCollector.add_single_request_metrics), so the log and the stage's result file
    hold the same requests: a user stopped at the end of a stage between answering and being
    counted is in neither. The request's times, taken where the user handles the answer, reach
    that point through a per-greenlet note (in genai-bench's local mode the count happens in the
    same greenlet, synchronously).
    """
    from genai_bench.metrics.aggregated_metrics_collector import AggregatedMetricsCollector
    from genai_bench.user.base_user import BaseUser
    from gevent import getcurrent  # genai-bench runs its users as gevent greenlets

    stage = {"concurrency": None}
    answering: dict[int, dict] = {}  # id(greenlet) -> the answer it is handing to genai-bench
    set_run_metadata, sample, collect_metrics, count = (
        AggregatedMetricsCollector.set_run_metadata, BaseUser.sample, BaseUser.collect_metrics,
        AggregatedMetricsCollector.add_single_request_metrics)

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
        answering[id(getcurrent())] = {
            "sent": response.start_time or sent,  # failed requests carry no times of their own
            "done": response.end_time or time.monotonic(),
            "status": response.status_code,
            "wanted_tokens": wanted,
            "output_tokens": getattr(response, "tokens_received", None),
        }
        try:
            return collect_metrics(self, response, endpoint)
        finally:
            answering.pop(id(getcurrent()), None)

    def on_count(self, metrics):
        now = time.monotonic()  # only if genai-bench counted a request its users did not hand over
        answer = answering.pop(id(getcurrent()), None) or {"sent": now, "done": now,
                                                           "status": metrics.error_code or 200}
        log.write(json.dumps({"concurrency": stage["concurrency"], **answer}) + "\n")
        return count(self, metrics)

    AggregatedMetricsCollector.set_run_metadata = on_stage
    AggregatedMetricsCollector.add_single_request_metrics = on_count
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
