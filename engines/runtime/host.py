"""What this host has: tool versions and device names, for manifest checks.

Each backend (``engines.runtime.backends``) says which of these describe its artifacts."""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostInfo:
    """A backend on this host: the device and tool versions its artifacts are tied to."""

    backend: str
    device: str
    tool_versions: dict[str, str]


def module_version(module: str) -> str:
    """``module.__version__``, or ``missing`` when it is not installed."""
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return "missing"


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


# CPU instruction sets that change INT8 numerics, best first: without VNNI/AMX, ONNX Runtime's
# u8s8 kernels (VPMADDUBSW) saturate 16-bit sums, so an INT8 graph measured on one class of CPU
# does not carry its accuracy to another. The device string records the class.
_CPU_ISAS = (
    ("amx_int8", "amx"),
    ("avx512_vnni", "avx512-vnni"),
    ("avx_vnni", "avx-vnni"),
    ("avx512f", "avx512"),
    ("avx2", "avx2"),
)


def cpu_device() -> str:
    """``cpu (<best int8 instruction set>)``, e.g. ``cpu (avx2)``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"cpu ({platform.machine() or 'unknown'})"
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in text.splitlines()
            if line.startswith(("flags", "Features"))
        ),
        [],
    )
    isa = next((name for flag, name in _CPU_ISAS if flag in flags), platform.machine())
    return f"cpu ({isa})"
