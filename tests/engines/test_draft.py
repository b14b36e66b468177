"""Reduced-scale JPEG decoding: same detections as a full decode, boxes in full-size pixels."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.build.accuracy import CANDIDATE_OPTIONS, REFERENCE_CONF, agreement
from engines.model.draft import draft_request, full_size
from engines.model.pipeline import ModelPipeline, load_model_pipeline
from engines.precision import Precision
from engines.runtime.onnxruntime import OnnxRuntimeEngine
from engines.sources.sample_images import CALIBRATION_PHOTOS, VALIDATION_PHOTOS, sample_image

# mAP50-95 of reduced-decode detections scored against full-decode ones, per photo: the same
# measure the build uses for INT8 against FP32, on a stricter budget than INT8's.
MIN_AGREEMENT = 0.9


def rotated_jpeg(name: str) -> bytes:
    """A photo stored sideways with EXIF orientation 6 (how phones save portrait shots)."""
    image = Image.open(sample_image(name)).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, exif=exif)
    return out.getvalue()


def upscaled_jpeg(name: str) -> bytes:
    """A larger JPEG (2x), as a phone would send: decoded at 1/4 scale for a 416 input."""
    image = Image.open(sample_image(name)).convert("RGB")
    out = io.BytesIO()
    image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS).save(
        out, "JPEG", quality=92
    )
    return out.getvalue()


def photos() -> dict[str, bytes]:
    """The sample photos that are JPEGs (only those decode at reduced scale), a rotated and
    a larger one."""
    found = {n: sample_image(n) for n in (*VALIDATION_PHOTOS, *CALIBRATION_PHOTOS)}
    jpegs = {n: p.read_bytes() for n, p in found.items() if Image.open(p).format == "JPEG"}
    return {**jpegs, "bus-rotated": rotated_jpeg("bus"), "zidane-2x": upscaled_jpeg("zidane")}


@pytest.fixture(scope="module")
def pipeline(default_model_source: Path) -> ModelPipeline:
    return load_model_pipeline(default_model_source, "yolov3-tiny-coco")


@pytest.mark.parametrize("name", sorted(photos()))
def test_reduced_decode_keeps_detections(
    name: str, pipeline: ModelPipeline, default_model_source: Path
) -> None:
    data = photos()[name]
    full = dataclasses.replace(pipeline, reduced_decode=False).prepare(data)
    reduced = pipeline.prepare(data)
    assert (reduced.width, reduced.height) == (full.width, full.height)
    engine = OnnxRuntimeEngine(default_model_source, Precision.FP32)
    try:
        ref = pipeline.detect_batch(engine, [full], CANDIDATE_OPTIONS)
        got = pipeline.detect_batch(engine, [reduced], CANDIDATE_OPTIONS)
    finally:
        engine.close()
    score = agreement(ref, got, pipeline.info.num_classes)
    if score.reference_boxes == 0:  # nothing confident in the photo: nor may the reduced decode
        assert not any((d.scores >= REFERENCE_CONF).any() for d in got), name
        return
    assert score.map50_95 >= MIN_AGREEMENT, (name, score)


def test_draft_covers_the_letterbox_in_either_orientation() -> None:
    # 4032x3024 phone photo, 416 input: the longer side must still cover 416 after rotation.
    width, height = draft_request((4032, 3024), (416, 416))
    assert min(width, height) >= 416 * 3024 / 4032 - 1 and max(width, height) >= 416
    assert full_size((4032, 3024), (504, 378)) == (4032, 3024)
    assert full_size((4032, 3024), (378, 504)) == (3024, 4032)


def test_reduced_decode_is_really_smaller() -> None:
    data = upscaled_jpeg("zidane")
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", draft_request(image.size, (416, 416)))
    assert image.size[0] < 2 * 1280 / 2 and np.asarray(image.convert("RGB")).shape[1] >= 416
