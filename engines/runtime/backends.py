"""The backend table: every way this project can run a variant, one row each.

Adding a backend is one module with a ``Backend`` (see ``engines.runtime.base``) and one row in
``BACKENDS``; settings, the CLI's choices, the build and the server all read the names from
here. Backend modules import their GPU libraries lazily, so the whole table imports anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from engines.errors import EngineLoadError
from engines.precision import Precision
from engines.runtime import onnxruntime, tensorrt
from engines.runtime.base import Backend, Engine, EngineOptions
from engines.runtime.host import HostInfo

BACKENDS: dict[str, Backend] = {
    onnxruntime.NAME: onnxruntime.BACKEND,
    tensorrt.NAME: tensorrt.BACKEND,
}
# Runs plain ONNX graphs: the build checks every variant graph with it, and a model without a
# build is served from its source ONNX through it. Also the default backend (runs anywhere).
ONNX_BACKEND: Backend = onnxruntime.BACKEND
DEFAULT_BACKEND = onnxruntime.NAME


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def check_backend_name(name: str) -> str:
    """``name`` if the table has it; ``ValueError`` listing the known ones otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return name


# The one type of a backend name: any name the table holds when it is checked.
BackendName = Annotated[str, AfterValidator(check_backend_name)]


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        known = ", ".join(BACKENDS)
        raise EngineLoadError(f"no engine backend named {name!r}; known: {known}") from None


def register_backend(backend: Backend) -> None:
    """Add a row at run time (plugins, tests); a name already in the table is refused."""
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend


def current_host(backend: str, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> HostInfo:
    """The device and tool versions an artifact of ``backend`` built or served here is tied to."""
    row = get_backend(backend)
    return HostInfo(row.name, row.device(providers), row.tool_versions())


def open_engine(
    artifact: Path, precision: Precision, backend: str, options: EngineOptions
) -> Engine:
    """Open ``artifact`` with the named backend."""
    return get_backend(backend).open(artifact, precision, options)
