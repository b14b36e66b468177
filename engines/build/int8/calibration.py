"""Image sets for calibration and validation: a folder of photos or the packaged demo photos.

An ``ImageSet`` is an ordered list of decoded images with a content hash (of the bytes and of the
augmentation recipe), so a build can tell when its calibration data changed, and per-photo hashes,
so it can refuse calibration and validation sets that share a photo. A ``CalibrationSet`` turns
one into the input feeds a quantizer reads, with an explicit cache path for the ranges.

The default demo set (no ``--calib``) expands six real photos from registry packages
(``engines.sources.sample_images.CALIBRATION_PHOTOS``: scikit-image's astronaut, chelsea,
rocket, camera and the motorcycle pair) by deterministic crops (100/80/60/45 % of each side,
random offset) and horizontal flips to 48 images; the letterbox then rescales each crop, so
objects appear at several scales. Validation uses other photos (``VALIDATION_PHOTOS``: bus,
zidane, coffee). The set is small and only meant to make `detect-serve build` work out of the
box: calibrate on images like your production traffic for real deployments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from engines.errors import EngineError, ImageDecodeError
from engines.model.preprocess import Resize, decode_image, letterbox
from engines.sources.sample_images import CALIBRATION_PHOTOS, VALIDATION_PHOTOS, sample_image

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
    photo_hashes: frozenset[str] = frozenset()  # sha256 of each source photo's bytes

    def shared_photos(self, other: ImageSet) -> frozenset[str]:
        """Source photos both sets hold (calibrating on validation photos would flatter INT8)."""
        return self.photo_hashes & other.photo_hashes

    def __len__(self) -> int:
        return len(self.images)

    def spread(self, count: int) -> ImageSet:
        """``count`` images spread evenly over the set (the sensitivity probes use a few)."""
        picks = np.linspace(0, len(self) - 1, num=min(count, len(self))).round().astype(int)
        return ImageSet(
            tuple(self.names[i] for i in picks),
            tuple(self.images[i] for i in picks),
            f"{self.content_hash}:spread{count}",
            f"{len(picks)} of {self.description}",
            self.photo_hashes,
        )

    @classmethod
    def from_folder(cls, folder: Path) -> ImageSet:
        """Every image file in ``folder`` (sorted); non-image files are an error, not skipped."""
        if not folder.is_dir():
            raise ImageSetError(f"image folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ImageSetError(f"image folder {folder} is empty")
        images, bad, photos, digest = [], [], [], hashlib.sha256()
        for path in files:
            data = path.read_bytes()
            try:
                images.append(decode_image(data, max_pixels=MAX_PIXELS))
            except ImageDecodeError as exc:
                bad.append(f"{path.name} ({exc})")
                continue
            photos.append(hashlib.sha256(data).hexdigest())
            digest.update(bytes.fromhex(photos[-1]))
        if bad:
            raise ImageSetError(f"{folder} holds files that are not images: {', '.join(bad[:10])}")
        names = tuple(p.name for p in files)
        return cls(names, tuple(images), digest.hexdigest(), str(folder), frozenset(photos))

    @classmethod
    def from_samples(cls, photos: Sequence[str], count: int) -> ImageSet:
        """Packaged real photos, expanded by crops and flips to ``count`` images."""
        digest = hashlib.sha256(repr((tuple(photos), count, AUGMENTATIONS)).encode())
        base, hashes = [], []
        for name in photos:
            data = sample_image(name).read_bytes()
            hashes.append(hashlib.sha256(data).hexdigest())
            digest.update(bytes.fromhex(hashes[-1]))
            base.append((name, decode_image(data, max_pixels=MAX_PIXELS)))
        names, images = [], []
        for k in range(count):
            name, image = base[k % len(base)]
            fraction, flip = AUGMENTATIONS[(k // len(base)) % len(AUGMENTATIONS)]
            names.append(f"{name}@crop{fraction}{'-flip' if flip else ''}#{k}")
            images.append(_augment(image, fraction, flip, k))
        label = f"demo photos {', '.join(photos)} expanded to {count}"
        return cls(tuple(names), tuple(images), digest.hexdigest(), label, frozenset(hashes))


def image_sets(
    validation: Path | int, calibration: Path | int | None
) -> tuple[ImageSet, ImageSet | None]:
    """(validation, calibration) sets: each a folder, or a count of demo images; refuses sets
    that share a photo (an INT8 check on its own calibration photos flatters itself)."""
    val = (
        ImageSet.from_folder(validation)
        if isinstance(validation, Path)
        else ImageSet.from_samples(VALIDATION_PHOTOS, validation)
    )
    if calibration is None:
        return val, None
    calib = (
        ImageSet.from_folder(calibration)
        if isinstance(calibration, Path)
        else ImageSet.from_samples(CALIBRATION_PHOTOS, calibration)
    )
    shared = calib.shared_photos(val)
    if shared:
        raise ImageSetError(
            f"calibration and validation sets share {len(shared)} photo(s); use disjoint sets"
        )
    return val, calib


def _augment(image: np.ndarray, fraction: float, flip: bool, seed: int) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = max(1, int(h * fraction)), max(1, int(w * fraction))
    rng = np.random.default_rng(seed)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = image[y : y + ch, x : x + cw]
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


class CalibrationSet(CalibrationDataReader):  # type: ignore[misc]
    """Calibration images as an iterable of input feeds (one letterboxed image each).

    Also an ONNX Runtime ``CalibrationDataReader``. ``cache_path`` is where the quantizer keeps
    the activation ranges it computed from this set; the builder names it after the set's content
    hash and the calibration method, so a changed set or method never reuses stale ranges.
    """

    def __init__(
        self,
        images: ImageSet,
        input_name: str,
        size: tuple[int, int],
        pad_value: int,
        cache_path: Path,
        batch: int = 1,
        resize: Resize = "pillow",
    ) -> None:
        """``batch`` images per feed: a static-batch model takes exactly its own batch;
        ``resize``: the model's letterbox resize."""
        self.images = images
        self.batch = batch
        self.resize = resize
        self.input_name = input_name
        self.size = size
        self.pad_value = pad_value
        self.cache_path = cache_path
        self.on_feed: Callable[[int], None] | None = None  # progress: called once per image
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    @property
    def content_hash(self) -> str:
        return self.images.content_hash

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        images = self.images.images
        for start in range(0, len(images), self.batch):
            # A short last feed is filled from the start of the set (real images, not blanks).
            chunk = [images[(start + k) % len(images)] for k in range(self.batch)]
            tensors = [
                letterbox(image, self.size, pad_value=self.pad_value, resize=self.resize)[0]
                for image in chunk
            ]
            if self.on_feed is not None:
                self.on_feed(min(self.batch, len(images) - start))
            yield {self.input_name: np.stack(tensors)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = iter(self)
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None
