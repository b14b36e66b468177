"""Every Prometheus metric the service exports, defined once.

Metrics live on a per-app ``CollectorRegistry`` (not the process-global one) so several apps can
exist in one process (tests) without duplicate-registration errors. Names follow Prometheus
conventions: base units, ``_total`` counters, histograms for latencies.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from service.stats import InferenceStats

# From 100 us (a small GPU batch) to 30 s (a saturated CPU queue): roughly x2.5 per step so that
# histogram_quantile() stays within ~25% anywhere in that range.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

MODEL_PRECISION = ("model", "precision")


class Metrics:
    """The service's metrics, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # The standard process_* (CPU, memory, open fds) and python_info series, which the
        # default global registry would carry but a custom one does not.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # Triton-style per-variant statistics for GET /v2/models/stats (not a Prometheus metric).
        self.inference_stats = InferenceStats()
        self.requests = Counter(
            "detect_requests",
            "Detection requests answered, by HTTP status code.",
            ("model", "precision", "status"),
            registry=r,
        )
        self.request_duration = Histogram(
            "detect_request_duration_seconds",
            "End-to-end request latency inside the service (decode to response).",
            MODEL_PRECISION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "detect_queue_wait_seconds",
            "Time an image waited in the batching queue.",
            MODEL_PRECISION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "detect_inference_duration_seconds",
            "Engine time for one batch.",
            MODEL_PRECISION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_duration = Histogram(
            "detect_preprocess_duration_seconds",
            "Decode + letterbox time per image.",
            MODEL_PRECISION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.postprocess_duration = Histogram(
            "detect_postprocess_duration_seconds",
            "Decode + NMS + box mapping per image.",
            MODEL_PRECISION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "detect_batch_size",
            "Images per engine batch.",
            MODEL_PRECISION,
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "detect_images",
            "Images run through an engine.",
            MODEL_PRECISION,
            registry=r,
        )
        self.queue_depth = Gauge(
            "detect_queue_depth",
            "Images waiting in the batching queue.",
            MODEL_PRECISION,
            registry=r,
        )
        self.queue_capacity = Gauge(
            "detect_queue_capacity",
            "Queue bound: images that may wait before 503s.",
            MODEL_PRECISION,
            registry=r,
        )
        self.inflight = Gauge(
            "detect_inflight_requests",
            "Detection requests being handled, counted once their body has arrived (HPA signal).",
            ("model",),
            registry=r,
        )
        self.rejected = Counter(
            "detect_rejected",
            "Requests refused before inference, by reason.",
            ("model", "reason"),
            registry=r,
        )
        self.precision_selected = Counter(
            "detect_precision_selected",
            "Precision asked for by the request vs the precision that answered.",
            ("model", "requested", "selected"),
            registry=r,
        )
        self.engine_info = Gauge(
            "detect_engine_info",
            "Loaded engine variants (value 1), with backend and device.",
            ("model", "precision", "backend", "device"),
            registry=r,
        )
        self.engine_ready = Gauge(
            "detect_engine_ready",
            "1 when the variant is warmed up and serving, 0 otherwise.",
            MODEL_PRECISION,
            registry=r,
        )

        # Live precision audit (service/audit/): reduced-precision answers re-run in FP32.
        self.audit_agreement = Gauge(
            "detect_audit_agreement",
            "Live mAP50-95 agreement with FP32 over the last shadow-run samples (rolling).",
            MODEL_PRECISION,
            registry=r,
        )
        self.audit_agreement_budget = Gauge(
            "detect_audit_agreement_budget",
            "The variant's build-time agreement budget (alerts compare live agreement to it).",
            MODEL_PRECISION,
            registry=r,
        )
        self.audit_window_samples = Gauge(
            "detect_audit_window_samples",
            "Shadow samples the live agreement is computed over.",
            MODEL_PRECISION,
            registry=r,
        )
        self.audit_samples = Counter(
            "detect_audit_samples",
            "Shadow FP32 re-runs completed.",
            MODEL_PRECISION,
            registry=r,
        )
        self.audit_dropped = Counter(
            "detect_audit_dropped",
            "Sampled requests whose shadow FP32 run was dropped, by reason.",
            ("model", "precision", "reason"),
            registry=r,
        )
        self.audit_demoted = Gauge(
            "detect_audit_demoted",
            "1 while `auto` avoids the variant because its live agreement is under budget.",
            MODEL_PRECISION,
            registry=r,
        )
        self.audit_kept = Counter(
            "detect_audit_kept",
            "Disagreeing samples kept on disk for recalibration.",
            MODEL_PRECISION,
            registry=r,
        )

    def initialise_variant(self, model: str, precision: str) -> None:
        """Export every per-variant series at zero from the start.

        A series born at its first request is first scraped already non-zero, so rate() sees
        no increase and the first minutes of traffic vanish from dashboards and alerts.
        """
        for metric in (
            self.request_duration,
            self.queue_wait,
            self.inference_duration,
            self.preprocess_duration,
            self.postprocess_duration,
            self.batch_size,
            self.images,
        ):
            metric.labels(model, precision)
        self.requests.labels(model, precision, "200")
        self.rejected.labels(model, "queue_full")
        self.rejected.labels(model, "deadline")
        self.inflight.labels(model)
