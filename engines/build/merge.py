"""Builds for several backends and precisions live side by side in one model folder.

Artifacts are named per backend (``int8.onnx`` for ONNX Runtime, ``int8.trt.onnx`` and
``int8.plan`` for TensorRT), a build writes into its own staging folder and moves an artifact
into place only once it is proven, and the manifest is merged per (backend, precision): a
TensorRT build leaves the ONNX Runtime variants alone, and a failed or rejected rebuild never
removes a variant that was accepted before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from engines.artifacts.manifest import Manifest, Variant
from engines.precision import Precision
from engines.sources.registry import sha256_file

# What a backend's artifacts are called: (variant ONNX, compiled plan or None).
_SUFFIXES: dict[str, tuple[str, str | None]] = {
    "onnxruntime": (".onnx", None),
    "tensorrt": (".trt.onnx", ".plan"),
}


def onnx_name(backend: str, precision: Precision) -> str:
    """The file name of the variant ONNX a backend runs (or compiles)."""
    return f"{precision.value}{_SUFFIXES[backend][0]}"


def plan_name(backend: str, precision: Precision) -> str:
    """The file name of a backend's compiled artifact; ValueError for backends without one."""
    suffix = _SUFFIXES[backend][1]
    if suffix is None:
        raise ValueError(f"backend {backend} runs the ONNX itself; it has no plan")
    return f"{precision.value}{suffix}"


def carried_over(previous: Manifest | None, source_sha256: str) -> list[Variant]:
    """The variants an earlier build recorded, if it was of the same source (else none: they
    describe another model)."""
    if previous is None or previous.source_sha256 != source_sha256:
        return []
    return list(previous.variants)


def find(variants: list[Variant], backend: str, precision: Precision) -> Variant | None:
    return next((v for v in variants if v.backend == backend and v.precision == precision), None)


def intact(variant: Variant, folder: Path) -> bool:
    """The variant's artifact is there with the recorded sha256."""
    if variant.artifact is None or variant.artifact_sha256 is None:
        return False
    path = folder / variant.artifact
    return path.is_file() and sha256_file(path) == variant.artifact_sha256


def put(manifest: Manifest, variant: Variant) -> None:
    """Record ``variant``, replacing only the entry of the same backend and precision."""
    manifest.variants = [
        v
        for v in manifest.variants
        if (v.backend, v.precision) != (variant.backend, variant.precision)
    ]
    manifest.variants.append(variant)
    order = list(Precision)
    manifest.variants.sort(key=lambda v: (v.backend, order.index(v.precision)))


def keeps_earlier(new: Variant, earlier: Variant | None, folder: Path) -> bool:
    """Whether a build result must not replace ``earlier``: a result that is not accepted never
    displaces an accepted variant whose artifact is intact."""
    return not new.accepted and earlier is not None and earlier.accepted and intact(earlier, folder)


def publish(staged: Path, folder: Path, name: str) -> Path:
    """Move a proven artifact from the staging folder to its final name (atomic rename)."""
    target = folder / name
    staged.replace(target)
    return target


@contextlib.contextmanager
def staging(folder: Path, backend: str) -> Iterator[Path]:
    """A private folder for one build's work in progress, removed afterwards."""
    path = folder / f".staging-{backend}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """One build of a model folder at a time. Replicas that share an engines volume all run
    ``serve --prepare``: the first builds, the others wait here and then find every variant
    cached instead of building the same plans again."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".build.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
