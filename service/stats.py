"""Per-variant inference statistics in the shape of the KServe v2 / Triton statistics extension.

``GET /v2/models/stats`` reports, per model and version, request success/fail counts with their
total time, and per image the queue wait, input (decode + letterbox), inference and output
(decode + NMS) durations, as cumulative ``{"count", "ns"}`` pairs the way Triton does, plus
per-batch-size execution counts. ``service.flow`` records every request, whatever its protocol.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class _BatchStats:
    compute_infer: Duration = field(default_factory=Duration)
    # Every image of a batch reports the same batch size, so each image adds 1/size and the
    # batch as a whole adds exactly one execution (rounded when read).
    executions: float = 0.0


@dataclass
class VariantStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, _BatchStats] = field(default_factory=dict)

    def request(self, ok: bool, seconds: float) -> None:
        (self.success if ok else self.fail).add(seconds)

    def item(self, queue_s: float, inference_s: float, batch_size: int) -> None:
        """One image came back from the engine in a batch of ``batch_size``."""
        self.queue.add(queue_s)
        # The batch's engine time is shared by its images; Triton's compute_infer is per request.
        self.compute_infer.add(inference_s / max(batch_size, 1))
        self.inference_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        batch = self.batches.setdefault(batch_size, _BatchStats())
        batch.compute_infer.add(inference_s / max(batch_size, 1), count=0)
        batch.executions += 1 / max(batch_size, 1)

    def merge(self, other: VariantStats) -> None:
        """Add ``other`` in (a model's statistics are the sum of its variants')."""
        for name in DURATIONS:
            mine, theirs = getattr(self, name), getattr(other, name)
            mine.count += theirs.count
            mine.ns += theirs.ns
        self.inference_count += other.inference_count
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for size, batch in other.batches.items():
            into = self.batches.setdefault(size, _BatchStats())
            into.compute_infer.ns += batch.compute_infer.ns
            into.executions += batch.executions

    def as_dict(self, name: str, version: str = "1") -> dict[str, Any]:
        batch_stats = []
        executions = 0
        for size in sorted(self.batches):
            batch = self.batches[size]
            runs = round(batch.executions)
            executions += runs
            batch_stats.append(
                {
                    "batch_size": size,
                    "compute_infer": {"count": runs, "ns": batch.compute_infer.ns},
                }
            )
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": executions,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": batch_stats,
        }


class InferenceStats:
    """Statistics of every (model, precision) this process served; thread-safe reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._variants: dict[tuple[str, str], VariantStats] = {}

    def variant(self, model: str, precision: str) -> VariantStats:
        with self._lock:
            return self._variants.setdefault((model, precision), VariantStats())

    def snapshot(self) -> dict[tuple[str, str], VariantStats]:
        with self._lock:
            return dict(self._variants)
