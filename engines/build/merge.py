"""Builds for several backends and precisions live side by side in one model folder.

Artifacts are named per backend (``int8.onnx`` for ONNX Runtime, ``int8.trt.onnx`` and
``int8.plan`` for TensorRT: each backend row's ``graph_suffix`` and what its ``compile`` writes),
a build writes into its own staging folder and moves an artifact into place only once it is
judged, and the manifest holds one record per (backend, precision): a TensorRT build leaves the
ONNX Runtime variants alone, and a failed or rejected rebuild never removes a variant that was
accepted before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import VariantRecord
from engines.sources.registry import sha256_file

# A file a build made in its staging folder and the name it is published under.
Staged = tuple[Path, str]


def carried_over(previous: Manifest | None, source_sha256: str) -> list[VariantRecord]:
    """The variants an earlier build recorded, if it was of the same source (else none: they
    describe another model)."""
    if previous is None or previous.source_sha256 != source_sha256:
        return []
    return list(previous.variants)


def intact(variant: VariantRecord, folder: Path) -> bool:
    """The variant's artifact is there with the recorded sha256."""
    if variant.artifact is None or variant.artifact_sha256 is None:
        return False
    path = folder / variant.artifact
    return path.is_file() and sha256_file(path) == variant.artifact_sha256


def keeps_earlier(new: VariantRecord, earlier: VariantRecord | None, folder: Path) -> bool:
    """Whether a build result must not replace ``earlier``: a result that is not accepted never
    displaces an accepted variant whose artifact is intact."""
    return not new.accepted and earlier is not None and earlier.accepted and intact(earlier, folder)


def publish(staged: Path, folder: Path, name: str) -> Path:
    """Move a judged artifact from the staging folder to its final name (atomic rename)."""
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
