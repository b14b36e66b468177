"""Per-model settings from ``model.yaml`` and the effective values they give.

A model's ``model.yaml`` may override, for that model only, the global settings: detection
defaults (``defaults``), batching (``batching``) and what ``detect-serve build`` makes
(``build``); ``input_size`` is read with the model's other facts (``engines.model.info``).
Anything left out falls back to the model family's own defaults (Ultralytics models answer
like ``yolo predict``), then to the global settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectDefaults(_Section):
    """Thresholds a request gets when it does not set them."""

    conf: float | None = Field(None, ge=0.0, le=1.0)
    iou: float | None = Field(None, ge=0.0, le=1.0)
    max_det: int | None = Field(None, ge=1, le=10_000)


class BatchingSection(_Section):
    max_batch: int | None = Field(None, ge=1, le=256)
    max_wait_ms: float | None = Field(None, ge=0.0, le=10_000.0)


class BuildSection(_Section):
    """Build inputs; relative folders are relative to the model's folder."""

    precisions: list[Literal["fp32", "fp16", "int8"]] | None = Field(None, min_length=1)
    calib_dir: Path | None = None
    val_dir: Path | None = None
    labels: Path | None = None

    def resolved(self, model_dir: Path) -> BuildSection:
        def under(path: Path | None) -> Path | None:
            return None if path is None else model_dir / path

        return self.model_copy(
            update={
                "calib_dir": under(self.calib_dir),
                "val_dir": under(self.val_dir),
                "labels": under(self.labels),
            }
        )


# Ultralytics' predictor defaults (ultralytics 8.4.190): cfg/default.yaml `iou: 0.7` and
# `max_det: 300`; engine/model.py `predict` sets `conf: 0.25`; class-aware NMS
# (`agnostic_nms: False`), as ours always is.
ULTRALYTICS_DEFAULTS = DetectDefaults(conf=0.25, iou=0.7, max_det=300)


def is_ultralytics(metadata: Mapping[str, str]) -> bool:
    """Exported by Ultralytics (its exporter writes ``author: Ultralytics``)."""
    return metadata.get("author", "").startswith("Ultralytics")


@dataclass(frozen=True)
class EffectiveDefaults:
    conf: float
    iou: float
    max_det: int
    source: str  # where the values came from, for /models


@dataclass(frozen=True)
class EffectiveBatching:
    max_batch: int
    max_wait_ms: float


def effective_defaults(
    own: DetectDefaults | None, metadata: Mapping[str, str], global_: DetectDefaults
) -> EffectiveDefaults:
    """model.yaml's values, then the family's (Ultralytics), then the global settings."""
    layers: list[tuple[str, DetectDefaults]] = []
    if own is not None:
        layers.append(("model.yaml", own))
    if is_ultralytics(metadata):
        layers.append(("ultralytics", ULTRALYTICS_DEFAULTS))
    layers.append(("settings", global_))
    values: dict[str, float | int] = {}
    used: list[str] = []
    for origin, layer in layers:
        for key in ("conf", "iou", "max_det"):
            value = getattr(layer, key)
            if key not in values and value is not None:
                values[key] = value
                if origin not in used:
                    used.append(origin)
    return EffectiveDefaults(
        conf=float(values["conf"]),
        iou=float(values["iou"]),
        max_det=int(values["max_det"]),
        source="+".join(used),
    )


def effective_batching(
    own: BatchingSection | None, max_batch: int, max_wait_ms: float, model_max_batch: int
) -> EffectiveBatching:
    """model.yaml's batching over the global one, never above the model's own batch limit."""
    wanted = own.max_batch if own is not None and own.max_batch is not None else max_batch
    wait = own.max_wait_ms if own is not None and own.max_wait_ms is not None else max_wait_ms
    return EffectiveBatching(min(wanted, model_max_batch), wait)
