"""The manifest file: one ``VariantRecord`` per (backend, precision), older schemas read, newer
refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.artifacts.manifest import MANIFEST, SCHEMA_VERSION, Manifest
from engines.artifacts.record import VariantRecord
from engines.errors import ArtifactMismatchError
from engines.precision import Precision

V1 = {
    "schema_version": 1,
    "model": "m",
    "source_path": "s.onnx",
    "source_sha256": "s",
    "layout": "yolov5",
    "input_size": [416, 416],
    "class_names": ["a"],
    "variants": [
        {
            "precision": "fp32",
            "backend": "onnxruntime",
            "device": "cpu (avx2)",
            "artifact": "fp32.onnx",
            "artifact_sha256": "h",
            "status": "accepted",
            "latency_ms": {"1": 10.0, "8": 40.0},
            "images_per_s": {"1": 100.0, "8": 200.0},
        },
        {
            "precision": "int8",
            "backend": "onnxruntime",
            "device": "cpu (avx2)",
            "status": "rejected: mAP50-95 agreement 0.4 < budget 0.95",
        },
    ],
}


def test_schema_1_manifest_is_read_as_records(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps(V1))
    manifest = Manifest.load(tmp_path)
    assert manifest is not None and manifest.schema_version == SCHEMA_VERSION
    fp32, int8 = manifest.variants
    assert fp32.accepted and fp32.reason == "" and fp32.latency_ms == {1: 10.0, 8: 40.0}
    assert fp32.per_image_latency_s == pytest.approx(0.005)
    assert fp32.timings is not None and fp32.timings.images_per_s == {1: 100.0, 8: 200.0}
    assert int8.status == "rejected"
    assert int8.reason == "mAP50-95 agreement 0.4 < budget 0.95"
    manifest.save(tmp_path)  # written back in the current schema, read back the same
    assert Manifest.load(tmp_path) == manifest


def test_schema_2_manifest_is_read_and_written_back_as_the_current_schema(
    tmp_path: Path,
) -> None:
    v2 = Manifest.model_validate(V1).model_dump(mode="json") | {"schema_version": 2}
    (tmp_path / MANIFEST).write_text(json.dumps(v2))
    manifest = Manifest.load(tmp_path)
    assert manifest is not None and manifest.schema_version == SCHEMA_VERSION == 3
    assert [v.status for v in manifest.variants] == ["accepted", "rejected"]


def test_one_record_per_backend_and_precision(tmp_path: Path) -> None:
    manifest = Manifest.model_validate(V1)
    pending = VariantRecord(precision=Precision.INT8, backend="tensorrt", device="no-gpu").defer(
        "plan compiled on the GPU host"
    )
    manifest.with_variant(pending)  # beside onnxruntime's int8, not instead of it
    assert manifest.variant(Precision.INT8, "tensorrt") == pending
    ort_int8 = manifest.variant(Precision.INT8)
    assert ort_int8 is not None and ort_int8.status == "rejected"  # default: onnxruntime's
    manifest.with_variant(pending.accept())  # replaces only its own (backend, precision)
    assert len(manifest.variants) == 3
    assert [(v.backend, v.precision.value) for v in manifest.variants] == [
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("tensorrt", "int8"),
    ]
    manifest.save(tmp_path)
    assert Manifest.load(tmp_path) == manifest


def test_newer_schema_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({**V1, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ArtifactMismatchError, match="newer than this detect-serve reads"):
        Manifest.load(tmp_path)


def test_record_is_frozen_and_steps_return_new_records() -> None:
    draft = VariantRecord(precision=Precision.FP16, backend="onnxruntime", device="cpu")
    assert draft.status == "rejected"  # nothing is accepted until proven
    accepted = draft.accept()
    assert accepted.accepted and not draft.accepted
    with pytest.raises(ValueError, match="frozen"):
        draft.status = "accepted"  # type: ignore[misc]
    assert accepted.reject("engine failed").reason == "engine failed"
    pending = draft.defer("compiled elsewhere")
    assert (pending.status, pending.reason, pending.accepted) == (
        "pending",
        "compiled elsewhere",
        False,
    )
