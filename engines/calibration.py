"""Image sets for calibration and validation: a folder of photos or the packaged demo photos.

A set is an ordered list of decoded images with a content hash (of the bytes and of the
augmentation recipe), so a build can tell when its calibration data changed. The default demo set
expands a handful of real photos by deterministic crops, flips and scales to a useful count; it is
small and only meant to make `detect-serve build` work out of the box: calibrate on images like
your production traffic for real deployments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from engines.errors import EngineError, ImageDecodeError
from engines.preprocess import decode_image, letterbox
from engines.sample_images import sample_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MAX_PIXELS = 100_000_000
# (crop fraction of width/height, horizontal flip): the demo-set expansion, in order.
AUGMENTATIONS: tuple[tuple[float, bool], ...] = (
    (1.0, False),
    (1.0, True),
    (0.8, False),
    (0.8, True),
    (0.6, False),
    (0.6, True),
    (0.45, False),
    (0.45, True),
)


class ImageSetError(EngineError):
    """A calibration or validation image set that cannot be used (empty, unreadable files)."""


@dataclass(frozen=True)
class ImageSet:
    names: tuple[str, ...]
    images: tuple[np.ndarray, ...]  # HxWx3 uint8 RGB
    content_hash: str
    description: str

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_folder(cls, folder: Path) -> ImageSet:
        """Every image file in ``folder`` (sorted); non-image files are an error, not skipped."""
        if not folder.is_dir():
            raise ImageSetError(f"image folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ImageSetError(f"image folder {folder} is empty")
        images, bad, digest = [], [], hashlib.sha256()
        for path in files:
            data = path.read_bytes()
            try:
                images.append(decode_image(data, max_pixels=MAX_PIXELS))
            except ImageDecodeError as exc:
                bad.append(f"{path.name} ({exc})")
                continue
            digest.update(hashlib.sha256(data).digest())
        if bad:
            raise ImageSetError(f"{folder} holds files that are not images: {', '.join(bad[:10])}")
        return cls(tuple(p.name for p in files), tuple(images), digest.hexdigest(), str(folder))

    @classmethod
    def from_samples(cls, photos: Sequence[str], count: int) -> ImageSet:
        """Packaged real photos, expanded by crops and flips to ``count`` images."""
        digest = hashlib.sha256(repr((tuple(photos), count, AUGMENTATIONS)).encode())
        base = []
        for name in photos:
            data = sample_image(name).read_bytes()
            digest.update(hashlib.sha256(data).digest())
            base.append((name, decode_image(data, max_pixels=MAX_PIXELS)))
        names, images = [], []
        for k in range(count):
            name, image = base[k % len(base)]
            fraction, flip = AUGMENTATIONS[(k // len(base)) % len(AUGMENTATIONS)]
            names.append(f"{name}@crop{fraction}{'-flip' if flip else ''}#{k}")
            images.append(_augment(image, fraction, flip, k))
        label = f"demo photos {', '.join(photos)} expanded to {count}"
        return cls(tuple(names), tuple(images), digest.hexdigest(), label)


def _augment(image: np.ndarray, fraction: float, flip: bool, seed: int) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = max(1, int(h * fraction)), max(1, int(w * fraction))
    rng = np.random.default_rng(seed)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = image[y : y + ch, x : x + cw]
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


class CalibrationFeeds(CalibrationDataReader):  # type: ignore[misc]
    """ONNX Runtime calibration reader: one letterboxed image per feed."""

    def __init__(
        self, images: ImageSet, input_name: str, size: tuple[int, int], pad_value: int
    ) -> None:
        self._images = images
        self._input_name = input_name
        self._size = size
        self._pad_value = pad_value
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for image in self._images.images:
            tensor, _ = letterbox(image, self._size, pad_value=self._pad_value)
            yield {self._input_name: tensor[None]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._feeds()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None
