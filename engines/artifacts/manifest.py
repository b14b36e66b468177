"""The build manifest: what was built, from what, how accurate, how fast (one per model).

Stored as ``{engines_dir}/{model}/manifest.json`` beside the artifacts it describes (a validated
sidecar, never a header inside an engine file).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from engines.precision import Precision

MANIFEST = "manifest.json"
SCHEMA_VERSION: Literal[1] = 1


class Calibration(BaseModel):
    method: str
    image_count: int
    content_hash: str
    source: str


class KeptFloat(BaseModel):
    node: str
    reason: str


class Accuracy(BaseModel):
    map50_95_agreement: float = Field(description="mAP50-95 vs FP32 detections as ground truth")
    map50_agreement: float
    budget: float
    reference_boxes: int
    validation_images: int
    validation_hash: str
    labelled_map50_95: float | None = None


class Variant(BaseModel):
    precision: Precision
    backend: str
    device: str
    artifact: str | None = Field(None, description="file name beside the manifest")
    artifact_sha256: str | None = None
    status: str = Field(description="'accepted' or 'rejected: <why>'")
    accuracy: Accuracy | None = None
    latency_ms: dict[int, float] = Field(default_factory=dict, description="batch -> median ms")
    images_per_s: dict[int, float] = Field(default_factory=dict)
    calibration: Calibration | None = None
    kept_float: list[KeptFloat] = Field(default_factory=list)
    tool_versions: dict[str, str] = Field(default_factory=dict)
    cache_key: str = ""
    build_seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


class Manifest(BaseModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    model: str
    source_path: str
    source_sha256: str
    layout: str
    input_size: tuple[int, int]
    class_names: list[str]
    variants: list[Variant] = Field(default_factory=list)

    def variant(self, precision: Precision) -> Variant | None:
        return next((v for v in self.variants if v.precision == precision), None)

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
