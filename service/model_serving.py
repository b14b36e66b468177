"""A served model's effective configuration: its ``model.yaml`` over the global settings."""

from __future__ import annotations

from dataclasses import dataclass

from engines.model.config import (
    DetectDefaults,
    EffectiveBatching,
    EffectiveDefaults,
    effective_batching,
    effective_defaults,
)
from engines.model.info import ModelInfo
from engines.sources.repository import read_model_spec
from service.config import Settings


@dataclass(frozen=True)
class ModelServing:
    """What one model is served with (shown by ``GET /models``)."""

    defaults: EffectiveDefaults
    batching: EffectiveBatching


def model_serving(settings: Settings, name: str, info: ModelInfo) -> ModelServing:
    """The model's effective serving configuration (``ModelFormatError`` for a bad model.yaml)."""
    spec = read_model_spec(settings.models_dir / name)
    global_defaults = DetectDefaults(
        conf=settings.default_conf, iou=settings.default_iou, max_det=settings.default_max_det
    )
    defaults = effective_defaults(spec.defaults if spec else None, info.metadata, global_defaults)
    # A static batch dim is the model's own limit (see OnnxRuntimeEngine); and a batch may
    # never be larger than the queue that feeds it.
    own_batch = info.inputs[0].shape[0] or settings.max_queue
    batching = effective_batching(
        spec.batching if spec else None,
        settings.max_batch,
        settings.max_wait_ms,
        min(own_batch, settings.max_queue),
    )
    return ModelServing(defaults, batching)
