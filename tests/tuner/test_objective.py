"""Scoring: weighted mean of the stages so far, latencies negated, hard SLOs infeasible, soft ones penalised."""

import pytest

from llm_autotuner.objective import INFEASIBLE_SCORE, Limit, gain, request_limits, score_stages


def stage(concurrency, tps, ttft_p90, error_rate=0.0):
    return {"concurrency": concurrency, "output_throughput": tps, "ttft_p90": ttft_p90, "error_rate": error_rate}


def test_throughput_is_the_mean_over_stages_and_maximised():
    score = score_stages([stage(1, 100.0, 0.2), stage(4, 140.0, 0.5)], "output_throughput", [])
    assert score.value == pytest.approx(120.0)
    assert score.score == pytest.approx(120.0)
    assert score.feasible


def test_stage_weights():
    score = score_stages([stage(1, 100.0, 0.2), stage(4, 140.0, 0.5)], "output_throughput", [], [1.0, 3.0])
    assert score.value == pytest.approx((100 + 3 * 140) / 4)
    # After one stage only that stage's weight counts.
    assert score_stages([stage(1, 100.0, 0.2)], "output_throughput", [], [1.0, 3.0]).value == pytest.approx(100.0)


def test_latency_is_minimised_by_negating_the_score():
    score = score_stages([stage(1, 100.0, 0.2), stage(4, 140.0, 0.6)], "ttft_p90", [])
    assert score.value == pytest.approx(0.4)
    assert score.score == pytest.approx(-0.4)
    faster = score_stages([stage(1, 100.0, 0.1), stage(4, 140.0, 0.3)], "ttft_p90", [])
    assert faster.score > score.score


def test_a_broken_hard_slo_makes_the_trial_infeasible_and_names_the_limit():
    score = score_stages([stage(1, 100.0, 0.2), stage(8, 300.0, 1.42)], "output_throughput", [Limit("ttft_p90", 1.0)])
    assert not score.feasible
    assert score.score == INFEASIBLE_SCORE
    assert score.value is None
    assert score.violation == "ttft_p90 1.42 s > 1 s at concurrency 8"
    assert score.slos_met == {"ttft_p90": False}


def test_a_broken_soft_slo_scales_the_score_by_limit_over_observed():
    limits = [Limit("ttft_p90", 1.0, hard=False), Limit("error_rate", 0.05)]
    score = score_stages([stage(1, 100.0, 0.5), stage(8, 300.0, 2.0)], "output_throughput", limits)
    assert score.feasible
    assert score.value == pytest.approx(200.0)
    assert score.score == pytest.approx(100.0)  # 200 * (1.0 / 2.0)
    assert score.slos_met == {"ttft_p90": False, "error_rate": True}
    latency = score_stages([stage(1, 100.0, 2.0)], "ttft_p90", [Limit("ttft_p90", 1.0, hard=False)])
    assert latency.score == pytest.approx(-4.0)  # -2.0 / 0.5: worse than the unpenalised -2.0


def test_error_rate_slo():
    score = score_stages([stage(1, 100.0, 0.2, error_rate=0.25)], "output_throughput", [Limit("error_rate", 0.05)])
    assert score.violation.startswith("error_rate 0.25 > 0.05")


def test_request_limits_take_the_tightest_limit_per_latency_kind():
    limits = [Limit("ttft_p90", 1.0), Limit("ttft_p99", 0.8), Limit("itl_p50", 0.05), Limit("e2e_mean", 5.0),
              Limit("error_rate", 0.1)]
    assert request_limits(limits) == {"ttft": 0.8, "tpot": 0.05, "e2e_latency": 5.0}


def test_gain_is_positive_when_better_in_either_direction():
    assert gain(120.0, 100.0, "output_throughput") == pytest.approx(0.2)
    assert gain(0.8, 1.0, "ttft_p90") == pytest.approx(0.2)
    assert gain(1.0, 0.0, "output_throughput") is None


def test_slos_met_names_every_broken_limit_not_only_the_first():
    # A hard ttft limit breaks first; the error rate, half the requests failed, must not read as met.
    limits = [Limit("ttft_p90", 1.0, hard=True), Limit("error_rate", 0.05, hard=True), Limit("e2e_p90", 9.0, hard=True)]
    score = score_stages([stage(4, 100.0, 2.0, error_rate=0.5) | {"e2e_p90": 3.0}], "output_throughput", limits)
    assert not score.feasible and "ttft_p90" in score.violation
    assert score.slos_met == {"ttft_p90": False, "error_rate": False, "e2e_p90": True}
