"""Builds for several backends and precisions live side by side in one model folder.

Artifacts are named per backend (``int8.onnx`` for ONNX Runtime, ``int8.trt.onnx`` and
``int8.plan`` for TensorRT: each backend row's ``graph_suffix`` and what its ``compile`` writes),
each variant is built in its own staging folder (``engines.build.staging``) and moved into place
only when finished, and the manifest holds one record per (backend, precision): a TensorRT build
leaves the ONNX Runtime variants alone, and a failed or rejected rebuild never removes a variant
that was accepted before (``guarded``). One build of a model folder runs at a time
(``build_lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import VariantRecord
from engines.sources.registry import sha256_file

LOCK_FILE = ".build.lock"


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


def guarded(earlier: VariantRecord | None, folder: Path) -> bool:
    """Whether ``earlier`` may be replaced only by an accepted variant: it is accepted and its
    artifact is intact (a failed or rejected rebuild never removes a working variant)."""
    return earlier is not None and earlier.accepted and intact(earlier, folder)


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """One build of a model folder at a time. Replicas that share an engines volume all run
    ``serve --prepare``: the first builds, the others wait here and then find every variant
    cached instead of building the same plans again."""
    folder.mkdir(parents=True, exist_ok=True)
    # A file, not the folder itself: flock on shared (NFS) volumes needs a file open for writing.
    # It stays (empty): removing a lock file others may be waiting on would let two builds in.
    with (folder / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
