"""Numeric precision of an engine variant, and what a request may ask for."""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal


class Precision(StrEnum):
    """Precision of a built variant. ``auto`` is a request-time policy, not a variant."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


AUTO: Final = "auto"
# What a request or setting may name: a variant's precision, or the load-adaptive policy.
RequestedPrecision = Precision | Literal["auto"]
