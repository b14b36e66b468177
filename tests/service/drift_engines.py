"""A stand-in INT8 engine that drifts, loaded by a real server through ``DETECT_ENGINE_FACTORY``.

The real INT8 engine answers the first ``DRIFT_AFTER`` batches unchanged; after that every output
value is multiplied by ``DRIFT_SCALE`` (default 0.8: boxes shrink toward the origin and scores
fall), the way a quantized model can quietly go wrong on traffic unlike its calibration set.
Other precisions are the real engines.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from engines.precision import Precision
from engines.runtime.base import Engine
from service.config import Settings
from service.registry import ENGINE_FACTORIES
from service.variant_specs import VariantSpec


class DriftingEngine:
    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self._batches = 0
        self._lock = threading.Lock()
        self._after = int(os.environ.get("DRIFT_AFTER", "0"))
        self._scale = np.float32(os.environ.get("DRIFT_SCALE", "0.8"))

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def warmup(self) -> None:
        self._inner.warmup()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self._batches += 1
            drifted = self._batches > self._after
        outputs = self._inner.infer(batch)
        return {k: v * self._scale for k, v in outputs.items()} if drifted else outputs


def drifting(spec: VariantSpec, settings: Settings) -> Engine:
    inner = ENGINE_FACTORIES[spec.backend](spec, settings)
    if spec.precision is not Precision.INT8:
        return inner
    return DriftingEngine(inner)  # type: ignore[return-value]
