"""The precision policy: explicit choices, `auto`, and load-adaptive moves with hysteresis."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from engines.artifacts.record import Timings, VariantRecord
from engines.precision import Precision
from service import selection
from service.errors import PrecisionUnavailable
from service.selection import PrecisionSelector
from tests.engines.build_fixtures import accuracy


def record(precision: Precision, per_image_latency_s: float, agreement: float) -> VariantRecord:
    """An accepted variant as the build records it, timed at batch 2."""
    timings = Timings(latency_ms={1: 1000 * per_image_latency_s, 2: 2000 * per_image_latency_s})
    return VariantRecord(
        precision=precision,
        backend="onnxruntime",
        device="cpu",
        status="accepted",
        accuracy=accuracy(agreement),
        timings=timings,
    )


FP32 = record(Precision.FP32, per_image_latency_s=0.100, agreement=1.0)
FP16 = record(Precision.FP16, per_image_latency_s=0.060, agreement=0.995)
INT8 = record(Precision.INT8, per_image_latency_s=0.040, agreement=0.96)


def test_record_gives_the_selector_its_figures() -> None:
    assert FP16.per_image_latency_s == pytest.approx(0.060)
    assert FP16.agreement == 0.995
    unmeasured_fp32 = VariantRecord(precision=Precision.FP32, backend="onnxruntime", device="cpu")
    assert unmeasured_fp32.agreement == 1.0 and unmeasured_fp32.per_image_latency_s is None


def selector(*variants: VariantRecord, slo_s: float = 0.05) -> PrecisionSelector:
    return PrecisionSelector(
        list(variants),
        auto_min_agreement=0.99,
        queue_wait_slo_s=slo_s,
        saturation_batch=8,
        hold_s=0.0,
    )


def test_auto_picks_fastest_variant_within_the_auto_budget() -> None:
    assert selector(FP32, FP16, INT8).select("auto") is Precision.FP16
    assert selector(FP32, INT8).select("auto") is Precision.FP32
    precise_int8 = record(Precision.INT8, 0.040, 0.995)
    assert selector(FP32, FP16, precise_int8).select("auto") is Precision.INT8


def test_explicit_precision_and_clear_refusals() -> None:
    policy = selector(FP32, INT8)
    assert policy.select("int8") is Precision.INT8
    with pytest.raises(PrecisionUnavailable, match=r"rejected: agreement 0\.81"):
        policy.select("fp16", {Precision.FP16: "rejected: agreement 0.81 < 0.99"})
    with pytest.raises(PrecisionUnavailable, match="unknown precision"):
        policy.select("bf16")


def test_auto_moves_to_faster_variant_under_pressure_and_back() -> None:
    policy = selector(FP32, FP16, INT8)
    assert policy.auto_choice is Precision.FP16
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP16, 0.200)  # 4x the SLO
    assert policy.auto_choice is Precision.INT8
    # Pressure on the variant auto no longer sends to does not move it further.
    policy.observe_queue_wait(Precision.FP16, 0.500)
    assert policy.auto_choice is Precision.INT8
    # Just under the SLO is not enough to come back (hysteresis) ...
    for _ in range(10):
        policy.observe_queue_wait(Precision.INT8, 0.040)
    assert policy.auto_choice is Precision.INT8
    # ... well under it is.
    for _ in range(20):
        policy.observe_queue_wait(Precision.INT8, 0.001)
    assert policy.auto_choice is Precision.FP16


def test_auto_never_moves_below_the_fastest_variant() -> None:
    policy = selector(FP32)
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP32, 10.0)
    assert policy.auto_choice is Precision.FP32


def test_hold_time_prevents_flapping() -> None:
    policy = PrecisionSelector(
        [FP32, FP16, INT8],
        auto_min_agreement=0.99,
        queue_wait_slo_s=0.05,
        saturation_batch=8,
        hold_s=60.0,
    )
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP16, 0.2)
    assert policy.auto_choice is Precision.INT8
    for _ in range(10):
        policy.observe_queue_wait(Precision.INT8, 0.0)
    assert policy.auto_choice is Precision.INT8  # within the hold time: no move back yet


def test_pressure_moves_auto_only_to_a_clearly_faster_variant() -> None:
    """A variant 5 % faster is within the noise of live figures: ``auto`` stays; 15 % faster
    is a real gain: it moves."""
    for int8_s, expected in ((0.095, Precision.FP32), (0.085, Precision.INT8)):
        policy = selector(FP32, record(Precision.INT8, int8_s, agreement=0.96))
        assert policy.auto_choice is Precision.FP32
        for _ in range(10):
            policy.observe_queue_wait(Precision.FP32, 0.200)  # 4x the SLO
        assert policy.auto_choice is expected, int8_s


def test_a_demoted_choice_falls_back_to_the_fastest_variant_within_the_auto_budget() -> None:
    """FP16 (the at-rest choice) demoted by the audit: ``auto`` goes to FP32, the fastest left
    that meets the auto agreement budget, not to the faster INT8 that does not."""
    policy = selector(FP32, FP16, INT8)
    policy.demoted = lambda p: "drifted" if p is Precision.FP16 else None
    assert policy.select("auto") is Precision.FP32
    assert policy.select("int8") is Precision.INT8  # explicit requests are still served


def test_auto_moves_back_after_the_default_two_second_hold() -> None:
    """Relief inside the hold time does not move ``auto`` back; once 2 s have passed since the
    move, it does (the time passing is what is tested: a sleep, not a hope)."""
    policy = PrecisionSelector(
        [FP32, FP16, INT8], auto_min_agreement=0.99, queue_wait_slo_s=0.05, saturation_batch=8
    )
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP16, 0.2)
    moved = time.monotonic()
    assert policy.auto_choice is Precision.INT8
    for _ in range(20):
        policy.observe_queue_wait(Precision.INT8, 0.0)
    if time.monotonic() - moved < 2.0:  # a stalled machine may already be past the hold
        assert policy.auto_choice is Precision.INT8
    time.sleep(max(0.0, moved + 2.1 - time.monotonic()))
    policy.observe_queue_wait(Precision.INT8, 0.0)
    assert policy.auto_choice is Precision.FP16


def test_auto_comes_back_only_below_the_recovery_wait_not_at_it() -> None:
    """Recovery is at half the SLO (25 ms here): a wait of exactly 25 ms is not yet "well under"
    the SLO; one just below it is."""
    policy = selector(FP32, FP16, INT8)
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP16, 0.200)
    assert policy.auto_choice is Precision.INT8
    policy.observe_queue_wait(Precision.INT8, 0.025)  # the first sample is the average itself
    assert policy.auto_choice is Precision.INT8
    policy.observe_queue_wait(Precision.INT8, 0.0)
    assert policy.auto_choice is Precision.FP16


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The selector's monotonic clock, moved by the test (``clock[0]``), starting at 1000 s."""
    now = [1000.0]
    monkeypatch.setattr(selection, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_auto_returns_to_rest_after_twice_the_hold_with_no_batch(clock: list[float]) -> None:
    """A client that comes back after a burst is not served by the burst's choice: with no
    batch for more than 2 x max(hold, 1 s), ``auto`` is back at rest (a clock the test moves)."""
    policy = selector(FP32, FP16, INT8)  # hold 0: the idle limit is 2 x 1 s
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP16, 0.2)
    assert policy.auto_choice is Precision.INT8 and policy.under_pressure
    clock[0] += 2.0
    assert policy.auto_choice is Precision.INT8  # exactly the limit: not yet
    clock[0] += 0.001
    assert policy.auto_choice is Precision.FP16 and not policy.under_pressure


def test_a_variant_exactly_at_the_auto_budget_is_within_it() -> None:
    at_budget = record(Precision.INT8, 0.040, agreement=0.99)
    assert at_budget.agreement == 0.99
    assert selector(FP32, at_budget).select("auto") is Precision.INT8
    just_under = record(Precision.INT8, 0.040, agreement=0.9899)
    assert selector(FP32, just_under).select("auto") is Precision.FP32


def test_after_moving_back_the_rest_choice_starts_its_wait_average_afresh() -> None:
    """The at-rest variant's wait average from before the pressure is stale: one calm batch
    after moving back must not send ``auto`` away again on the old figure (no flapping)."""
    policy = selector(FP32, FP16, INT8)
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP16, 0.2)
    for _ in range(10):
        policy.observe_queue_wait(Precision.INT8, 0.0)
    assert policy.auto_choice is Precision.FP16
    policy.observe_queue_wait(Precision.FP16, 0.0)
    assert policy.auto_choice is Precision.FP16 and not policy.under_pressure


def test_auto_may_move_back_exactly_when_the_hold_time_is_over(clock: list[float]) -> None:
    policy = PrecisionSelector(
        [FP32, FP16, INT8], auto_min_agreement=0.99, queue_wait_slo_s=0.05, saturation_batch=8
    )  # the default 2 s hold
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP16, 0.2)
    assert policy.auto_choice is Precision.INT8  # moved at t = 1000
    clock[0] += 1.999
    policy.observe_queue_wait(Precision.INT8, 0.0)
    assert policy.auto_choice is Precision.INT8  # calm, but inside the hold
    clock[0] = 1002.0
    policy.observe_queue_wait(Precision.INT8, 0.0)
    assert policy.auto_choice is Precision.FP16  # the hold is over at 2 s itself


def test_a_variant_whose_agreement_was_never_measured_is_not_within_the_budget() -> None:
    unmeasured = VariantRecord(
        precision=Precision.INT8,
        backend="onnxruntime",
        device="cpu",
        status="accepted",
        timings=Timings(latency_ms={1: 10.0, 2: 20.0}),  # far faster than FP32, but unproven
    )
    assert unmeasured.agreement is None
    assert selector(FP32, unmeasured).select("auto") is Precision.FP32


def test_a_wait_exactly_at_the_slo_is_no_pressure() -> None:
    policy = selector(FP32, FP16, INT8, slo_s=0.05)
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP16, 0.05)
    assert policy.auto_choice is Precision.FP16 and not policy.under_pressure
    policy.observe_queue_wait(Precision.FP16, 0.06)
    assert policy.auto_choice is Precision.INT8


def test_one_long_wait_after_calm_ones_is_smoothed_away() -> None:
    """The wait average moves 30 % of the way to each sample: one 100 ms batch after a calm one
    (average 30 ms, under the 50 ms SLO) is not yet pressure; a second one (51 ms) is."""
    policy = selector(FP32, FP16, INT8, slo_s=0.05)
    policy.observe_queue_wait(Precision.FP16, 0.0)
    policy.observe_queue_wait(Precision.FP16, 0.1)
    assert policy.auto_choice is Precision.FP16
    policy.observe_queue_wait(Precision.FP16, 0.1)
    assert policy.auto_choice is Precision.INT8
