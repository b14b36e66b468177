"""What this host would build or run with: tool versions and device, for manifest checks."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class HostInfo:
    backend: str
    device: str
    tool_versions: dict[str, str]


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return None


def gpu_name() -> str | None:
    """Name + compute capability of CUDA device 0 via cuda-python, or None without a GPU."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{name.strip()} (sm_{props.major}{props.minor})"


def current_host(backend: str, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> HostInfo:
    """Tool versions that change what an artifact computes, and the device it is tied to."""
    versions = {
        "onnx": _version("onnx") or "missing",
        "onnxruntime": _version("onnxruntime") or "missing",
    }
    if backend == "tensorrt":
        versions["tensorrt"] = _version("tensorrt") or "missing"
        return HostInfo(backend, gpu_name() or "no-gpu", versions)
    on_gpu = providers and providers[0] != "CPUExecutionProvider"
    device = (gpu_name() or "no-gpu") if on_gpu else "cpu"
    return HostInfo(backend, device, versions)
