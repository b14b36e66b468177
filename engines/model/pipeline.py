"""The one model pipeline: image -> letterboxed tensor -> engine outputs -> detections.

Loaded once per model (``load_model_pipeline``) and used by the server, the build's validator
and the benchmark, so all three letterbox, decode and run NMS the same way. The per-image steps
are CPU-heavy (image decode, resize, NMS); the server calls them in worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.model.draft import draft_request, full_size, stored_size, to_full_size
from engines.model.info import ModelInfo, read_model_info
from engines.model.layouts import OutputLayout, detect_layout
from engines.model.postprocess import Detections, postprocess
from engines.model.preprocess import LetterboxTransform, decode_image, letterbox
from engines.runtime.base import Engine

# Decoding allows any size the service's default pixel limit allows (40 MP); the service passes
# its configured limit.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class PreparedImage:
    tensor: np.ndarray  # (3, H, W) float32 letterboxed
    transform: LetterboxTransform
    width: int
    height: int


@dataclass(frozen=True)
class DetectOptions:
    conf: float
    iou: float
    max_det: int
    classes: frozenset[int] | None = None


@dataclass(frozen=True)
class ModelPipeline:
    """Pre- and post-processing for one model (shared by all its precision variants)."""

    info: ModelInfo
    layout: OutputLayout
    max_pixels: int = DEFAULT_MAX_PIXELS
    reduced_decode: bool = True  # JPEGs much larger than the input decode at 1/2..1/8 scale

    def prepare(self, data: bytes) -> PreparedImage:
        """Encoded image bytes (untrusted: size-checked before decoding) -> prepared image."""
        stored = stored_size(data) if self.reduced_decode else None
        draft = draft_request(stored, self.info.input_size) if stored else None
        image = decode_image(data, max_pixels=self.max_pixels, draft_size=draft)
        prepared = self.prepare_array(image)
        if stored is None or stored[0] * stored[1] == image.shape[0] * image.shape[1]:
            return prepared  # decoded at full scale
        width, height = full_size(stored, (image.shape[1], image.shape[0]))
        transform = to_full_size(prepared.transform, (width, height))
        return PreparedImage(prepared.tensor, transform, width=width, height=height)

    def prepare_array(self, image: np.ndarray) -> PreparedImage:
        """A decoded HxWx3 uint8 RGB image -> prepared image."""
        info = self.info
        tensor, transform = letterbox(
            image, info.input_size, pad_value=info.pad_value, resize=info.resize
        )
        return PreparedImage(tensor, transform, width=image.shape[1], height=image.shape[0])

    def finish(
        self,
        outputs: Mapping[str, np.ndarray],
        image: PreparedImage,
        options: DetectOptions,
        index: int = 0,
    ) -> Detections:
        """Row ``index`` of a batch's outputs -> the image's detections in its own pixels."""
        candidates = self.layout.decode(outputs, index, options.conf)
        return postprocess(
            candidates,
            image.transform,
            iou=options.iou,
            max_det=options.max_det,
            classes=options.classes,
        )

    def detect_batch(
        self, engine: Engine, images: Sequence[PreparedImage], options: DetectOptions
    ) -> list[Detections]:
        """One engine call over ``images`` (at most ``engine.max_batch``), then each image's
        detections: what the validator and the benchmark run, without the server's batcher."""
        outputs = engine.infer(np.stack([image.tensor for image in images]))
        return [self.finish(outputs, image, options, k) for k, image in enumerate(images)]

    def detect_arrays(
        self,
        engine: Engine,
        images: Sequence[np.ndarray],
        options: DetectOptions,
        tick: Callable[[int], None] | None = None,
    ) -> list[Detections]:
        """Decoded images in engine-sized batches; ``tick(n)`` after each batch of n."""
        results: list[Detections] = []
        step = max(1, engine.max_batch)
        for start in range(0, len(images), step):
            chunk = [self.prepare_array(image) for image in images[start : start + step]]
            results.extend(self.detect_batch(engine, chunk, options))
            if tick is not None:
                tick(len(chunk))
        return results

    def parse_classes(self, text: str | None) -> frozenset[int] | None:
        """``"0,2"`` or ``"person,car"`` (or a mix) -> class ids; ValueError names the bad one."""
        if text is None or not text.strip():
            return None
        by_name = {name: i for i, name in enumerate(self.info.class_names)}
        ids: set[int] = set()
        for token in (t.strip() for t in text.split(",")):
            # ASCII digits only: str.isdigit() also accepts '٣' (int() reads it as 3) and '²'
            # (which int() refuses), neither of which a client means as a class id.
            if token.isascii() and token.isdigit() and int(token) < self.info.num_classes:
                ids.add(int(token))
            elif token in by_name:
                ids.add(by_name[token])
            else:
                raise ValueError(f"unknown class {token[:64]!r}")
        return frozenset(ids)


def load_model_pipeline(
    onnx_path: Path,
    name: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fallback: Mapping[str, object] | None = None,
    input_size: tuple[int, int] | None = None,
) -> ModelPipeline:
    """Read a model's description and pick its output layout, once per model.

    ``fallback`` holds its model.yaml facts, ``input_size`` an explicit size (see
    ``read_model_info``). Raises ``ModelFormatError`` for a file that is not a usable detection
    ONNX.
    """
    info = read_model_info(onnx_path, name, fallback, input_size)
    layout = detect_layout(info.outputs, info.num_classes, info.layout)
    return ModelPipeline(info, layout, max_pixels)
