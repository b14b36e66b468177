"""Numeric precision of an engine variant."""

from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """Precision of a built variant. ``auto`` is a request-time policy, not a variant."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value
