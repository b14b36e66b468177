"""The one record of a variant, from build to serve.

The builder fills it in step by step (each step returns a new copy: the record is frozen), the
manifest stores it, the server loads the accepted ones, ``auto`` chooses by it and ``GET /models``
shows it. Everything said about one variant lives here and nowhere else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engines.precision import Precision


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Calibration(_Frozen):
    method: str
    image_count: int
    content_hash: str
    source: str


class KeptFloat(_Frozen):
    node: str
    reason: str


class Accuracy(_Frozen):
    map50_95_agreement: float = Field(description="mAP50-95 vs FP32 detections as ground truth")
    map50_agreement: float
    budget: float
    reference_boxes: int
    validation_images: int
    validation_hash: str
    labelled_map50_95: float | None = None


# How the build times a variant; what a figure means depends on it, so it is stored with them.
BUILD_TIMING_LOAD = "in-process engine.infer, one caller, back-to-back batches after warm-up"


class Timings(_Frozen):
    latency_ms: dict[int, float] = Field(description="batch size -> median ms per batch")
    measured_under: str = BUILD_TIMING_LOAD

    @property
    def images_per_s(self) -> dict[int, float]:
        return {b: round(b * 1000 / ms, 2) for b, ms in self.latency_ms.items() if ms > 0}

    @property
    def per_image_s(self) -> float | None:
        """Seconds per image at the largest measured batch (the throughput-relevant figure)."""
        if not self.latency_ms:
            return None
        batch, ms = max(self.latency_ms.items())
        return ms / 1000 / batch


# pending: the variant ONNX passed its check, but its backend's artifact (a TensorRT plan) is
# compiled and checked where the backend's compiler is (the GPU host); not served until then.
Status = Literal["accepted", "rejected", "pending"]


class VariantRecord(_Frozen):
    """One variant: what it is, where its artifact is, how accurate and fast, and whether it
    may be served (``status``) and why not (``reason``)."""

    precision: Precision
    backend: str
    device: str
    artifact: str | None = Field(None, description="file name beside the manifest, or a path")
    artifact_sha256: str | None = None
    status: Status = "rejected"  # nothing is accepted until the build has proven it
    reason: str = Field("", description="why it was rejected or is pending; empty when accepted")
    accuracy: Accuracy | None = None
    timings: Timings | None = None
    calibration: Calibration | None = None
    kept_float: tuple[KeptFloat, ...] = ()
    tool_versions: dict[str, str] = Field(default_factory=dict)
    cache_key: str = ""
    build_seconds: float = 0.0
    note: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def agreement(self) -> float | None:
        """mAP50-95 agreement with FP32 (FP32 agrees with itself; unmeasured otherwise)."""
        if self.accuracy is not None:
            return self.accuracy.map50_95_agreement
        return 1.0 if self.precision is Precision.FP32 else None

    @property
    def latency_ms(self) -> dict[int, float]:
        return dict(self.timings.latency_ms) if self.timings else {}

    @property
    def per_image_latency_s(self) -> float | None:
        return self.timings.per_image_s if self.timings else None

    def accept(self) -> VariantRecord:
        return self.model_copy(update={"status": "accepted", "reason": ""})

    def reject(self, reason: str) -> VariantRecord:
        return self.model_copy(update={"status": "rejected", "reason": reason})

    def defer(self, reason: str) -> VariantRecord:
        """Pending: proven as far as this host can go, compiled and judged elsewhere."""
        return self.model_copy(update={"status": "pending", "reason": reason})
