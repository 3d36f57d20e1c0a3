"""The metric registry: one definition per metric, aliases resolved to it, and every latency
statistic computed from a field genai-bench really records per request."""

import json
from pathlib import Path

from llm_autotuner.metrics import METRICS, OBJECTIVE_METRICS, SLO_METRICS
from llm_autotuner.trainables.genai_bench import parse_stage_file

STAGE_FILE = Path(__file__).parent / "data" / "D100_64_text-to-text_num_concurrency_4_time_9s.json"


def test_latency_fields_are_the_ones_genai_bench_records_per_request():
    request = json.loads(STAGE_FILE.read_text())["individual_request_metrics"][0]
    fields = {m.request_field for m in METRICS.values() if m.request_field}
    assert fields == {"ttft", "tpot", "e2e_latency"} and fields <= set(request)


def test_itl_is_tpot_under_another_name():
    metrics = parse_stage_file(STAGE_FILE)
    assert METRICS["itl_p90"].request_field == METRICS["tpot_p90"].request_field
    assert metrics["itl_p90"] == metrics["tpot_p90"] > 0


def test_every_registered_metric_is_in_a_parsed_stage_and_slos_only_limit_minimised_metrics():
    metrics = parse_stage_file(STAGE_FILE)
    assert set(METRICS) - {"output_throughput_per_gpu"} <= set(metrics)  # per GPU: added by the trial
    assert all(not METRICS[name].maximize for name in SLO_METRICS)
    assert "error_rate" in SLO_METRICS and "error_rate" not in OBJECTIVE_METRICS
