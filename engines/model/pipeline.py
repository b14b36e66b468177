"""The per-image work around the engine: bytes -> tensor before, outputs -> detections after.

These functions are CPU-heavy (image decode, resize, NMS) and are always called in a worker
thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from engines.model.info import ModelInfo
from engines.model.layouts import OutputLayout
from engines.model.postprocess import Detections, postprocess
from engines.model.preprocess import LetterboxTransform, decode_image, letterbox

DEFAULT_PAD_VALUE = 114


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
    classes: frozenset[int] | None


class ImagePipeline:
    """Pre- and post-processing for one model (shared by all its precision variants)."""

    def __init__(self, info: ModelInfo, layout: OutputLayout, *, max_pixels: int) -> None:
        self.info = info
        self.layout = layout
        self._max_pixels = max_pixels
        pad = info.metadata.get("pad_value")
        self._pad_value = int(pad) if pad is not None and pad.isdigit() else DEFAULT_PAD_VALUE

    def prepare(self, data: bytes) -> PreparedImage:
        image = decode_image(data, max_pixels=self._max_pixels)
        tensor, transform = letterbox(image, self.info.input_size, pad_value=self._pad_value)
        return PreparedImage(tensor, transform, width=image.shape[1], height=image.shape[0])

    def finish(
        self, outputs: Mapping[str, np.ndarray], image: PreparedImage, options: DetectOptions
    ) -> Detections:
        candidates = self.layout.decode(outputs, 0, options.conf)
        return postprocess(
            candidates,
            image.transform,
            iou=options.iou,
            max_det=options.max_det,
            classes=options.classes,
        )

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
