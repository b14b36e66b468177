"""GPU memory and utilisation from NVML (nvidia-ml-py), exported only where a GPU is present."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class NvmlCollector(Collector):
    """Reads every GPU at scrape time (NVML calls are microseconds; no background thread)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._count = int(nvml.nvmlDeviceGetCount())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["gpu", "name"]
        used = GaugeMetricFamily(
            "detect_gpu_memory_used_bytes", "GPU memory in use.", labels=labels
        )
        total = GaugeMetricFamily(
            "detect_gpu_memory_total_bytes", "GPU memory size.", labels=labels
        )
        util = GaugeMetricFamily(
            "detect_gpu_utilization_ratio",
            "Fraction of time the GPU was busy (0..1).",
            labels=labels,
        )
        for index in range(self._count):
            try:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                name = self._nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU that stops answering must not break /metrics
                log.warning("NVML read of GPU %d failed: %s", index, exc)
                continue
            values = [str(index), name]
            used.add_metric(values, float(memory.used))
            total.add_metric(values, float(memory.total))
            try:
                # Not supported on MIG instances and some boards; memory is still worth having.
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            except Exception as exc:
                log.debug("NVML utilisation of GPU %d unavailable: %s", index, exc)
                continue
            util.add_metric(values, float(rates.gpu) / 100.0)
        yield from (used, total, util)


def register_gpu_collector(registry: CollectorRegistry) -> bool:
    """Register NVML metrics if nvidia-ml-py imports and finds a GPU; otherwise export nothing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if int(pynvml.nvmlDeviceGetCount()) == 0:
            return False
    except Exception:  # no package, no driver, no device: all mean "no GPU metrics"
        return False
    registry.register(NvmlCollector(pynvml))
    return True
