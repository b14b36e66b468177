"""NVML collector with a stand-in pynvml module (no GPU needed; the real-GPU checks are in
test_gpu_metrics_nvml.py)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.gpu_metrics import register_gpu_collector


@dataclass
class Memory:
    used: int
    total: int


@dataclass
class Rates:
    gpu: int


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    module = types.ModuleType("pynvml")
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda h: b"NVIDIA H100" if h == 0 else "NVIDIA L4"  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: Memory(used=(h + 1) * 2**30, total=80 * 2**30)  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = lambda h: Rates(gpu=40 + h)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", module)
    yield module


def test_gpu_metrics_exported_per_device(fake_nvml: types.ModuleType) -> None:
    registry = CollectorRegistry()
    assert register_gpu_collector(registry)
    text = generate_latest(registry).decode()
    assert 'detect_gpu_memory_used_bytes{gpu="0",name="NVIDIA H100"} 1.073741824e+09' in text
    assert 'detect_gpu_utilization_ratio{gpu="1",name="NVIDIA L4"} 0.41' in text
    assert 'detect_gpu_memory_total_bytes{gpu="1",name="NVIDIA L4"}' in text


def test_no_gpu_means_no_gpu_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("pynvml")

    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    module.nvmlInit = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", module)
    registry = CollectorRegistry()
    assert not register_gpu_collector(registry)
    assert "detect_gpu" not in generate_latest(registry).decode()


def test_a_failing_gpu_read_does_not_break_the_scrape(fake_nvml: types.ModuleType) -> None:
    registry = CollectorRegistry()
    register_gpu_collector(registry)

    def second_is_lost(h: int) -> Memory:
        if h == 1:
            raise RuntimeError("GPU is lost")
        return Memory(used=3 * 2**30, total=80 * 2**30)

    fake_nvml.nvmlDeviceGetMemoryInfo = second_is_lost  # type: ignore[attr-defined]
    samples = {
        (s.name, s.labels["gpu"]): s.value for family in registry.collect() for s in family.samples
    }
    # The GPU that still answers is reported in full; the lost one is left out, not zeroed.
    assert samples == {
        ("detect_gpu_memory_used_bytes", "0"): 3 * 2**30,
        ("detect_gpu_memory_total_bytes", "0"): 80 * 2**30,
        ("detect_gpu_utilization_ratio", "0"): 0.40,
    }


def test_utilisation_unsupported_still_exports_memory(fake_nvml: types.ModuleType) -> None:
    def unsupported(h: int) -> Rates:
        raise RuntimeError("Not Supported")  # what NVML says on MIG instances

    fake_nvml.nvmlDeviceGetUtilizationRates = unsupported  # type: ignore[attr-defined]
    registry = CollectorRegistry()
    assert register_gpu_collector(registry)
    text = generate_latest(registry).decode()
    assert 'detect_gpu_memory_used_bytes{gpu="1",name="NVIDIA L4"}' in text
    assert "detect_gpu_utilization_ratio{" not in text
