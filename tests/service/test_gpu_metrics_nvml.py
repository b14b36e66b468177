"""The NVML collector against a real NVIDIA GPU (the stand-in tests are in test_gpu_metrics.py).

Runs where nvidia-ml-py finds a GPU; elsewhere every test skips, saying why. It needs neither
TensorRT nor CUDA toolkits (so it is not marked `gpu`): only the driver's NVML library.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.gpu_metrics import register_gpu_collector

MIB = 2**20


def _nvml() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception as exc:  # no package, no driver, no device
        pytest.skip(f"no NVIDIA GPU visible to NVML ({type(exc).__name__}: {exc})")
    if count == 0:
        pytest.skip("NVML found no GPU")
    return pynvml


def _smi(query: str) -> list[str]:
    """One nvidia-smi column per GPU: an independent reader of the same driver state."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not on PATH (it ships with the NVIDIA driver)")
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def test_every_gpu_is_exported_with_the_drivers_name_and_memory_size() -> None:
    _nvml()
    registry = CollectorRegistry()
    assert register_gpu_collector(registry)
    names = _smi("name")
    totals_mib = [int(v) for v in _smi("memory.total")]
    for index, (name, total_mib) in enumerate(zip(names, totals_mib, strict=True)):
        labels = {"gpu": str(index), "name": name}
        total = registry.get_sample_value("detect_gpu_memory_total_bytes", labels)
        used = registry.get_sample_value("detect_gpu_memory_used_bytes", labels)
        assert total is not None and used is not None, generate_latest(registry).decode()
        assert abs(total / MIB - total_mib) <= 1, (total, total_mib)
        assert 0 <= used <= total
        util = registry.get_sample_value("detect_gpu_utilization_ratio", labels)
        if util is not None:  # MIG instances and some boards have no utilisation counter
            assert 0.0 <= util <= 1.0


def test_memory_used_follows_a_real_allocation() -> None:
    """The gauge is read at scrape time: 2 GiB allocated on GPU 0 shows up in the next scrape."""
    _nvml()
    torch = pytest.importorskip("torch", reason="allocating GPU memory here uses PyTorch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    registry = CollectorRegistry()
    assert register_gpu_collector(registry)
    labels = {"gpu": "0", "name": _smi("name")[0]}
    torch.zeros(
        1, device="cuda:0"
    )  # the CUDA context's own memory must not count as the allocation
    torch.cuda.synchronize()
    before = registry.get_sample_value("detect_gpu_memory_used_bytes", labels)
    block = torch.empty(2 * 1024 * MIB, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    during = registry.get_sample_value("detect_gpu_memory_used_bytes", labels)
    del block
    torch.cuda.empty_cache()
    after = registry.get_sample_value("detect_gpu_memory_used_bytes", labels)
    assert before is not None and during is not None and after is not None
    assert during - before >= 2 * 1024 * MIB - 64 * MIB, (before, during)
    assert during - after >= 2 * 1024 * MIB - 64 * MIB, (during, after)
