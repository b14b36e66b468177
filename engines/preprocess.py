"""Image bytes -> letterboxed NCHW tensor, and the transform that maps boxes back.

Decoding is defensive: the declared size is checked against the pixel limit *before* any pixel is
decoded (decompression bombs), truncated files are errors rather than silently grey-padded, and
EXIF orientation is applied so boxes come back in the orientation the user sees.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from engines.errors import ImageDecodeError, ImageTooLargeError

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit is checked first; Pillow's own bomb guard stays on as a second line of defence.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 200_000_000)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (L, I;16, P, RGBA, LA, CMYK, YCbCr, ...) -> 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale the actual range into 8 bits (Pillow's convert would clip).
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        grey = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (114, 114, 114, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB in display orientation; first frame of animations.

    Raises ``ImageTooLargeError`` when the declared size exceeds ``max_pixels`` and
    ``ImageDecodeError`` for anything that is not a complete, decodable image.
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image declares {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}"
                )
            image.seek(0)
            image.load()
            upright: Image.Image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(upright)
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"image could not be decoded: {exc}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise ImageDecodeError("image has no pixels")
    return np.asarray(rgb, dtype=np.uint8)


@dataclass(frozen=True)
class LetterboxTransform:
    """Maps boxes between letterboxed-input pixels and original-image pixels."""

    scale: float
    pad_x: float
    pad_y: float
    src_width: int
    src_height: int

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N,4) input-pixel boxes -> original pixels, clipped to the image."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_x) / self.scale
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_y) / self.scale
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, self.src_width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, self.src_height)
        return boxes

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]] * self.scale + self.pad_x
        boxes[:, [1, 3]] = boxes[:, [1, 3]] * self.scale + self.pad_y
        return boxes


def letterbox(
    image: np.ndarray, size: tuple[int, int], *, pad_value: int = 114
) -> tuple[np.ndarray, LetterboxTransform]:
    """HxWx3 uint8 -> (3, H_in, W_in) float32 0..1, aspect kept, padding centred.

    ``size`` is (height, width) of the model input.
    """
    src_h, src_w = image.shape[:2]
    dst_h, dst_w = size
    scale = min(dst_w / src_w, dst_h / src_h)
    new_w = max(1, min(dst_w, round(src_w * scale)))
    new_h = max(1, min(dst_h, round(src_h * scale)))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    pad_x, pad_y = (dst_w - new_w) // 2, (dst_h - new_h) // 2
    canvas = np.full((dst_h, dst_w, 3), pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.asarray(resized)
    tensor = canvas.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    # The effective scale per axis after rounding; use x's (differs from y's by < 1 px at most).
    transform = LetterboxTransform(new_w / src_w, float(pad_x), float(pad_y), src_w, src_h)
    return tensor, transform


def preprocess(
    data: bytes, size: tuple[int, int], *, max_pixels: int, pad_value: int = 114
) -> tuple[np.ndarray, LetterboxTransform]:
    return letterbox(decode_image(data, max_pixels=max_pixels), size, pad_value=pad_value)
