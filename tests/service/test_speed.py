"""Live speed figures: they follow the batches actually run, and `auto` ranks by them."""

from __future__ import annotations

import pytest

from engines.artifacts.record import Timings, VariantRecord
from engines.precision import Precision
from service.selection import FASTER_MARGIN, PrecisionSelector
from service.speed import SERVING_SOURCE, WARMUP_SOURCE, LiveSpeed, first_guess
from tests.engines.build_fixtures import accuracy


def record(precision: Precision, ms_by_batch: dict[int, float], agreement: float) -> VariantRecord:
    return VariantRecord(
        precision=precision,
        backend="onnxruntime",
        device="cpu",
        status="accepted",
        accuracy=accuracy(agreement),
        timings=Timings(latency_ms=ms_by_batch, measured_under="a busy build machine"),
    )


# What a build on a busy machine recorded: INT8 no faster than FP32 (the figures that kept
# `auto` on FP32 under saturation).
FP32 = record(Precision.FP32, {1: 45.0, 8: 1120.0}, 1.0)
INT8 = record(Precision.INT8, {1: 46.0, 8: 1160.0}, 0.97)


def test_first_guess_is_the_manifest_labelled_with_its_load() -> None:
    figures = first_guess(FP32).figures()
    assert {b: f.ms for b, f in figures.items()} == {1: 45.0, 8: 1120.0}
    assert all(f.samples == 0 and "a busy build machine" in f.source for f in figures.values())


def test_live_estimate_follows_injected_batch_times() -> None:
    speed = first_guess(FP32)
    speed.replace({1: 40.0, 8: 300.0})
    assert speed.per_image_s(8) == pytest.approx(0.300 / 8)
    assert speed.figures()[8].source == WARMUP_SOURCE
    for _ in range(40):  # the host gets slower: 800 ms per batch of 8
        speed.observe(8, 0.800)
    assert speed.per_image_s(8) == pytest.approx(0.100, rel=0.01)
    assert speed.figures()[8].source == SERVING_SOURCE and speed.figures()[8].samples == 41
    for _ in range(40):  # and faster again
        speed.observe(8, 0.200)
    assert speed.per_image_s(8) == pytest.approx(0.025, rel=0.01)
    assert speed.figures()[1].ms == 40.0  # other batch sizes keep their own figure


def test_a_batch_size_never_run_uses_the_nearest_measured_one() -> None:
    speed = LiveSpeed()
    assert speed.per_image_s(8) is None
    speed.observe(4, 0.2)
    assert speed.per_image_s(8) == pytest.approx(0.05)
    speed.observe(1, 0.01)
    assert speed.per_image_s(2) == pytest.approx(0.01)


def selector(fp32: LiveSpeed, int8: LiveSpeed) -> PrecisionSelector:
    return PrecisionSelector(
        [FP32, INT8],
        auto_min_agreement=0.99,
        queue_wait_slo_s=0.05,
        saturation_batch=8,
        hold_s=0.0,
        speeds={Precision.FP32: fp32, Precision.INT8: int8},
    )


def test_auto_moves_on_live_figures_not_the_manifests() -> None:
    fp32, int8 = first_guess(FP32), first_guess(INT8)
    policy = selector(fp32, int8)
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP32, 0.5)
    # The manifest says INT8 is no faster: moving would not help, so auto stays.
    assert policy.auto_choice is Precision.FP32 and not policy.under_pressure
    # Measured on this host, INT8 serves twice the images: now saturation moves auto to it.
    fp32.replace({1: 40.0, 8: 320.0})
    int8.replace({1: 25.0, 8: 160.0})
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP32, 0.5)
    assert policy.auto_choice is Precision.INT8 and policy.under_pressure
    # Pressure falls: INT8's waits drop well under the SLO, and auto goes back.
    for _ in range(10):
        policy.observe_queue_wait(Precision.INT8, 0.001)
    assert policy.auto_choice is Precision.FP32 and not policy.under_pressure


def test_served_batches_can_take_the_faster_variant_away() -> None:
    fp32, int8 = first_guess(FP32), first_guess(INT8)
    fp32.replace({1: 40.0, 8: 320.0})
    int8.replace({1: 25.0, 8: 160.0})
    policy = selector(fp32, int8)
    for _ in range(10):
        policy.observe_queue_wait(Precision.FP32, 0.5)
    assert policy.auto_choice is Precision.INT8
    for _ in range(40):  # INT8's real batches turn out as slow as FP32's
        int8.observe(8, 0.330)
    assert policy.auto_choice is Precision.FP32


def test_under_pressure_a_variant_exactly_at_the_margin_is_not_clearly_faster() -> None:
    """``FASTER_MARGIN`` is a strict bound: INT8 at exactly 0.9x FP32's time per image is not
    worth moving to; a millisecond per batch less is."""
    fp32, int8 = first_guess(FP32), first_guess(INT8)
    fp32.replace({1: 1000.0, 8: 8000.0})  # 1 s per image in a full batch
    int8.replace({1: 900.0, 8: 7200.0})  # 0.9 s: the margin exactly
    policy = selector(fp32, int8)
    at_margin = int8.per_image_s(8)
    assert at_margin is not None and at_margin == FASTER_MARGIN * 1.0  # exact in binary
    assert policy.fastest() is Precision.FP32
    int8.replace({8: 7199.0})
    assert policy.fastest() is Precision.INT8
