"""genai-bench, with a line per request: when it was sent, when its answer ended, how many output
tokens it asked for and got. Run as `python -m llm_autotuner.trainables.timed_genai_bench ARGS`
(ARGS as for `genai-bench`, or `--args-from-stdin` alone: they then come on stdin as one JSON
list, after the imports), with REQUEST_LOG_ENV naming the file to append to.

Why: genai-bench 0.0.5 keeps no time of day per request, and its run duration ends at its next
once-a-second check, so neither the window a stage's requests really took (first sent to last
answered, failed ones included) nor an answer cut short can be read from its result files.
This runs in genai-bench's own process (importing it monkey-patches the process with gevent),
never in ours. tests/trainables/test_genai_bench_parsing.py fails loudly if the hooks below are gone.

It also has genai-bench count the answers that have no time per output token, and live through a
stage where none has one or where every request failed (see `install`): genai-bench 0.0.5 drops an
answer of one token as invalid (the stage then "collected no request metrics"), and ends a stage
without any value for a statistic with "No values found for metric 'tpot'. This should never
happen!" and exit code 1, losing the trial.
"""

from __future__ import annotations

import json
import os
import sys
import time

REQUEST_LOG_ENV = "AUTOTUNER_REQUEST_LOG"
ARGS_FROM_STDIN = "--args-from-stdin"  # the only argument: genai-bench's come later, as a JSON list on one line
WAITING = "genai-bench is imported and waits for its arguments"
PER_TOKEN_FIELDS = {"tpot", "output_inference_speed", "output_throughput"}  # genai-bench's per-request ones


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
    from genai_bench.metrics.metrics import RequestLevelMetrics
    from genai_bench.user.base_user import BaseUser
    from gevent import getcurrent  # genai-bench runs its users as gevent greenlets

    stage = {"concurrency": None}
    answering: dict[int, dict] = {}  # id(greenlet) -> the answer it is handing to genai-bench
    set_run_metadata, sample, collect_metrics, count, aggregate = (
        AggregatedMetricsCollector.set_run_metadata, BaseUser.sample, BaseUser.collect_metrics,
        AggregatedMetricsCollector.add_single_request_metrics, AggregatedMetricsCollector.aggregate_metrics_data)

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

    def on_aggregate(self, *args, **kwargs):
        # genai-bench raises if no answered request of the stage has a value for a statistic: if
        # every request failed, none has any. Such statistics are left empty (null in the stage's
        # file) as genai-bench leaves its audio ones; the stage's file, with its errors, is written.
        answered = [m for m in self.all_request_metrics if not m.error_code]
        empty = {field for field in RequestLevelMetrics.model_fields
                 if all(getattr(m, field) is None for m in answered)} - {"error_code", "error_message"}
        skipped = RequestLevelMetrics.AUDIO_METRICS_FIELDS
        RequestLevelMetrics.AUDIO_METRICS_FIELDS = skipped | empty
        try:
            return aggregate(self, *args, **kwargs)
        finally:
            RequestLevelMetrics.AUDIO_METRICS_FIELDS = skipped

    # genai-bench has no time per output token (tpot and the speeds from it) for an answer of one
    # token, nor for one whose tokens all arrived within 1 ms (a client not scheduled while the
    # engine streamed reads them in one go: seen on a busy machine). It would drop the first kind
    # as invalid and crash on a stage of the second; optional, as its audio statistics are, they
    # are over the answers that have them, and empty where none has.
    RequestLevelMetrics.AUDIO_METRICS_FIELDS = RequestLevelMetrics.AUDIO_METRICS_FIELDS | PER_TOKEN_FIELDS
    AggregatedMetricsCollector.set_run_metadata = on_stage
    AggregatedMetricsCollector.aggregate_metrics_data = on_aggregate
    AggregatedMetricsCollector.add_single_request_metrics = on_count
    BaseUser.sample = on_sample
    BaseUser.collect_metrics = on_answer


def main() -> None:
    began = time.monotonic()
    from genai_bench.cli.cli import cli

    with open(os.environ[REQUEST_LOG_ENV], "a", buffering=1) as log:
        install(log)
        args = sys.argv[1:]
        if args == [ARGS_FROM_STDIN]:
            # Started with the engine, so that the imports above overlap its start; the arguments
            # (the engine's address among them) come once it is up and warmed up.
            print(f"[autotuner] {WAITING} (imported in {time.monotonic() - began:.1f} s)", file=sys.stderr,
                  flush=True)
            line = sys.stdin.readline()
            if not line:  # the trial ended before its benchmark
                return
            args = json.loads(line)
        sys.argv[:] = ["genai-bench", *args]
        cli()


if __name__ == "__main__":
    main()
