"""The build manifest: what was built, from what, how accurate, how fast (one per model).

Stored as ``{engines_dir}/{model}/manifest.json`` beside the artifacts it describes (a validated
sidecar, never a header inside an engine file). One ``VariantRecord`` per variant.

Schema history: 1 kept ``status`` as ``"rejected: <why>"`` and timings as top-level
``latency_ms``/``images_per_s``; 2 has ``status`` + ``reason`` and ``timings``; 3 holds one record
per (backend, precision), the builds of several backends side by side, and adds the ``pending``
status. Versions 1 and 2 are read (upgraded in memory); a newer version than this code knows is
refused with the reason (an older reader would take another backend's record for its own).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from engines.artifacts.record import VariantRecord
from engines.errors import ArtifactMismatchError
from engines.precision import Precision
from engines.runtime.backends import DEFAULT_BACKEND

MANIFEST = "manifest.json"
SCHEMA_VERSION: Literal[3] = 3


def manifest_path(engines_dir: Path, model: str) -> Path:
    """Where the build of ``model`` records itself (its artifacts lie beside it)."""
    return engines_dir / model / MANIFEST


def _slot(record: VariantRecord) -> tuple[str, Precision]:
    return record.backend, record.precision


def _upgrade_v1_variant(old: dict[str, Any]) -> dict[str, Any]:
    new = {k: v for k, v in old.items() if k not in ("latency_ms", "images_per_s")}
    status = str(old.get("status", ""))
    new["status"], _, reason = status.partition(": ")
    if new["status"] != "accepted":
        new["status"], new["reason"] = "rejected", reason or status
    if old.get("latency_ms"):
        new["timings"] = {"latency_ms": old["latency_ms"]}
    return new


class Manifest(BaseModel):
    schema_version: Literal[3] = SCHEMA_VERSION
    model: str
    source_path: str
    source_sha256: str
    layout: str
    input_size: tuple[int, int]
    class_names: list[str]
    variants: list[VariantRecord] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _read_older(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        version = data.get("schema_version", SCHEMA_VERSION)  # version 1 files name theirs
        if version == 1:
            variants = [_upgrade_v1_variant(v) for v in data.get("variants", [])]
            return {**data, "schema_version": SCHEMA_VERSION, "variants": variants}
        if version == 2:  # a subset of 3: one backend's records, none pending
            return {**data, "schema_version": SCHEMA_VERSION}
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ArtifactMismatchError(
                f"manifest schema {version} is newer than this detect-serve reads "
                f"({SCHEMA_VERSION}); upgrade detect-serve or rebuild with `detect-serve build`"
            )
        return data

    def variant(self, precision: Precision, backend: str = DEFAULT_BACKEND) -> VariantRecord | None:
        """``backend``'s record of ``precision``, if any."""
        found = (v for v in self.variants if (v.backend, v.precision) == (backend, precision))
        return next(found, None)

    def with_variant(self, record: VariantRecord) -> None:
        """Record ``record``, replacing only the earlier one of its backend and precision; by
        backend, then in precision order."""
        kept = [v for v in self.variants if (v.backend, v.precision) != _slot(record)]
        order = list(Precision)
        self.variants = sorted([*kept, record], key=lambda v: (v.backend, order.index(v.precision)))

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST
        # A unique partial name (two builds must not write into one file), renamed over the old
        # manifest: readers and an interrupted save never see a half-written one.
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST}-")
        partial = Path(name)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.model_dump(mode="json"), indent=2))
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, folder: Path) -> Manifest | None:
        path = folder / MANIFEST
        if not path.is_file():
            return None
        return cls.model_validate_json(path.read_text())
