"""Metric definitions and the observer that records what the scheduler knows (in-process)."""

from __future__ import annotations

import itertools
import platform

import pytest

from engines.precision import Precision
from service.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS, Metrics
from service.registry import _VariantObserver
from service.selection import PrecisionSelector
from service.speed import LiveSpeed
from tests.service.test_selection import record

LABELS = {"model": "m", "precision": "fp32"}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_latency_buckets_resolve_sub_millisecond_batches_and_multi_second_queues() -> None:
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    assert LATENCY_BUCKETS[0] <= 1e-4 and LATENCY_BUCKETS[-1] >= 30
    # histogram_quantile interpolates inside a bucket: close neighbours (about x2.5) keep it near.
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_BUCKETS)]
    assert max(ratios) <= 3.0 + 1e-9, ratios


def test_every_power_of_two_batch_size_has_its_own_bucket() -> None:
    assert list(BATCH_SIZE_BUCKETS) == [2**k for k in range(len(BATCH_SIZE_BUCKETS))]
    assert BATCH_SIZE_BUCKETS[-1] >= 128


def test_variant_series_exist_at_zero_before_any_traffic() -> None:
    metrics = Metrics()
    metrics.initialise_variant("m", "fp32")
    for name in (
        "detect_request_duration_seconds_count",
        "detect_queue_wait_seconds_count",
        "detect_inference_duration_seconds_count",
        "detect_preprocess_duration_seconds_count",
        "detect_postprocess_duration_seconds_count",
        "detect_batch_size_count",
        "detect_images_total",
    ):
        assert sample(metrics, name, **LABELS) == 0, name
    assert sample(metrics, "detect_requests_total", **LABELS, status="200") == 0
    for reason in ("queue_full", "deadline"):
        assert sample(metrics, "detect_rejected_total", model="m", reason=reason) == 0
    assert sample(metrics, "detect_inflight_requests", model="m") == 0
    Metrics()  # a second app in one process has its own registry: no duplicate error


def observer() -> tuple[Metrics, _VariantObserver, PrecisionSelector]:
    metrics = Metrics()
    watched = _VariantObserver(metrics, "m", Precision.FP32, LiveSpeed())
    selector = PrecisionSelector(
        [record(Precision.FP32, 0.1, 1.0), record(Precision.INT8, 0.05, 0.9)],
        auto_min_agreement=0.99,
        queue_wait_slo_s=0.05,
        saturation_batch=8,
        hold_s=0.0,
    )
    watched.selector = selector
    return metrics, watched, selector


def test_observer_records_batches_waits_and_images() -> None:
    metrics, watched, _ = observer()
    watched.queued(3)
    assert sample(metrics, "detect_queue_depth", **LABELS) == 3
    watched.batch_started(3, [0.001, 0.002, 0.004])
    assert sample(metrics, "detect_batch_size_count", **LABELS) == 1
    assert sample(metrics, "detect_batch_size_sum", **LABELS) == 3
    assert sample(metrics, "detect_batch_size_bucket", **LABELS, le="2.0") == 0
    assert sample(metrics, "detect_batch_size_bucket", **LABELS, le="4.0") == 1
    assert sample(metrics, "detect_queue_wait_seconds_count", **LABELS) == 3
    assert sample(metrics, "detect_queue_wait_seconds_sum", **LABELS) == pytest.approx(0.007)
    watched.batch_finished(3, 0.25, ok=True)
    watched.batch_finished(2, 0.5, ok=False)  # a failed batch took time but ran no images
    assert sample(metrics, "detect_inference_duration_seconds_count", **LABELS) == 2
    assert sample(metrics, "detect_inference_duration_seconds_sum", **LABELS) == 0.75
    assert sample(metrics, "detect_images_total", **LABELS) == 3
    watched.rejected("queue_full")
    assert sample(metrics, "detect_rejected_total", model="m", reason="queue_full") == 1


def test_observer_feeds_the_longest_wait_of_a_batch_to_auto() -> None:
    _, watched, selector = observer()
    assert selector.auto_choice is Precision.FP32
    watched.batch_started(2, [0.001, 0.002])  # well under the 50 ms SLO
    assert selector.auto_choice is Precision.FP32
    watched.batch_started(2, [0.001, 0.5])  # one image waited 10x the SLO
    assert selector.auto_choice is Precision.INT8


def test_observer_keeps_the_live_speed_current_with_every_good_batch() -> None:
    """What ``auto`` ranks variants by and ``GET /models`` shows: a good batch's engine time
    becomes this host's figure for its size; a failed batch is no measure of speed."""
    live = LiveSpeed({4: 999.0}, "build manifest")
    watched = _VariantObserver(Metrics(), "m", Precision.FP32, live)
    watched.batch_finished(4, 0.2, ok=True)
    assert live.per_image_s(4) == pytest.approx(0.05)
    watched.batch_finished(4, 5.0, ok=False)
    assert live.per_image_s(4) == pytest.approx(0.05)
    assert live.figures()[4].samples == 1


def test_the_registry_carries_the_standard_process_series() -> None:
    """A custom registry has no process_* series unless asked: the service's has them (memory
    and CPU of the server, what a capacity dashboard plots next to the request rates)."""
    metrics = Metrics()
    resident = sample(metrics, "process_resident_memory_bytes")
    assert resident is not None and resident > 0
    assert sample(metrics, "process_cpu_seconds_total") is not None
    # And python_info, which says which interpreter a regression appeared with.
    version = platform.python_version_tuple()
    info = {"implementation": platform.python_implementation(), "version": ".".join(version)}
    info |= {"major": version[0], "minor": version[1], "patchlevel": version[2]}
    assert sample(metrics, "python_info", **info) == 1.0
