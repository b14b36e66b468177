"""What the server may load: accepted, intact variants built for this host; the rest refused."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import Timings, VariantRecord
from engines.artifacts.variants import load_servable_variants, verify_variant
from engines.errors import ArtifactMismatchError
from engines.precision import Precision
from engines.runtime.backends import current_host
from engines.sources.registry import sha256_file
from tests.engines.build_fixtures import accuracy, tiny_detector

MODEL = "tiny"


@pytest.fixture()
def engines_dir(tmp_path: Path) -> Path:
    """A built model as the builder records it: fp32 and int8 accepted, fp16 rejected."""
    folder = tmp_path / MODEL
    folder.mkdir()
    host = current_host("onnxruntime")
    manifest = Manifest(
        model=MODEL,
        source_path="source.onnx",
        source_sha256="s",
        layout="yolov5",
        input_size=(32, 32),
        class_names=["a", "b"],
    )
    for precision, score in ((Precision.FP32, 1.0), (Precision.INT8, 0.97), (Precision.FP16, 0.5)):
        artifact = folder / f"{precision.value}.onnx"
        onnx.save(tiny_detector(), str(artifact))
        manifest.variants.append(
            VariantRecord(
                precision=precision,
                backend="onnxruntime",
                device=host.device,
                artifact=artifact.name,
                artifact_sha256=sha256_file(artifact),
                status="accepted" if score >= 0.95 else "rejected",
                reason="" if score >= 0.95 else "mAP50-95 agreement 0.5 < 0.99",
                accuracy=accuracy(score),
                timings=Timings(latency_ms={1: 10.0, 2: 18.0}),
                tool_versions=host.tool_versions,
            )
        )
    manifest.save(folder)
    return tmp_path


def edit(engines_dir: Path, precision: Precision, **changes: object) -> None:
    manifest = Manifest.load(engines_dir / MODEL)
    assert manifest is not None
    variant = manifest.variant(precision)
    assert variant is not None
    # Edited in place: a changed backend moves the record, it does not add one beside it.
    edited = variant.model_copy(update=changes)
    manifest.variants = [edited if v is variant else v for v in manifest.variants]
    manifest.save(engines_dir / MODEL)


def test_only_accepted_intact_variants_are_served(engines_dir: Path) -> None:
    servable, refused = load_servable_variants(engines_dir, MODEL, "onnxruntime")
    assert [v.record.precision for v in servable] == [Precision.FP32, Precision.INT8]
    int8 = servable[1].record
    assert int8.status == "accepted" and int8.agreement == 0.97
    assert int8.accuracy is not None and int8.latency_ms == {1: 10.0, 2: 18.0}
    assert servable[1].path == engines_dir / MODEL / "int8.onnx"
    assert refused == {Precision.FP16: "rejected: mAP50-95 agreement 0.5 < 0.99"}


def test_tampered_artifact_is_refused_with_the_hashes(engines_dir: Path) -> None:
    artifact = engines_dir / MODEL / "int8.onnx"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    manifest = Manifest.load(engines_dir / MODEL)
    assert manifest is not None
    variant = manifest.variant(Precision.INT8)
    assert variant is not None
    with pytest.raises(ArtifactMismatchError, match=r"\(tampered or corrupt\); rebuild with"):
        verify_variant(variant, engines_dir / MODEL, current_host("onnxruntime"))
    servable, refused = load_servable_variants(engines_dir, MODEL, "onnxruntime")
    assert [v.record.precision for v in servable] == [Precision.FP32]
    assert "int8.onnx has sha256" in refused[Precision.INT8]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tool_versions": {"onnx": "1.0", "onnxruntime": "1.0.0"}}, "built with onnx"),
        ({"tool_versions": {"onnxruntime": "1.0.0"}}, "built with onnxruntime 1.0.0, this host"),
        ({"device": "cpu (neon)"}, "built on device 'cpu (neon)'"),  # no x86 host reports neon
        ({"backend": "tensorrt"}, "built for backend tensorrt"),
    ],
)
def test_variant_built_elsewhere_is_refused(
    engines_dir: Path, change: dict[str, object], message: str
) -> None:
    edit(engines_dir, Precision.INT8, **change)
    servable, refused = load_servable_variants(engines_dir, MODEL, "onnxruntime")
    assert Precision.INT8 not in {v.record.precision for v in servable}
    assert message in refused[Precision.INT8]
    assert "rebuild with `detect-serve build`" in refused[Precision.INT8]


def test_missing_artifact_and_missing_manifest(engines_dir: Path) -> None:
    (engines_dir / MODEL / "fp32.onnx").unlink()
    _, refused = load_servable_variants(engines_dir, MODEL, "onnxruntime")
    assert "is missing" in refused[Precision.FP32]
    with pytest.raises(ArtifactMismatchError, match="no manifest"):
        load_servable_variants(engines_dir, "other", "onnxruntime")
