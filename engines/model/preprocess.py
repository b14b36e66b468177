"""Image bytes -> letterboxed NCHW tensor, and the transform that maps boxes back.

Decoding is defensive: the declared size is checked against the pixel limit *before* any pixel is
decoded (decompression bombs), truncated files are errors rather than silently grey-padded, and
EXIF orientation is applied so boxes come back in the orientation the user sees.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from engines.errors import ImageDecodeError, ImageTooLargeError

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit is checked first; Pillow's own bomb guard stays on as a second line of defence
# (it warns above this and raises above twice this, whatever limit the caller passes).
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 200_000_000)
# Only the formats a camera or browser produces. Pillow would otherwise also try EPS (which
# runs Ghostscript), PSD, FITS, ... on untrusted bytes. MPO (phone JPEGs) opens through JPEG.
# The letterbox grey (YOLO training pads with it); a model may name another in its metadata.
DEFAULT_PAD_VALUE = 114

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
_GREY_16 = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (L, I;16, I, F, P, RGBA, LA, CMYK, YCbCr, ...) -> 8-bit RGB."""
    if image.mode in (*_GREY_16, "I", "F"):
        # Deep grey: scale into 8 bits (Pillow's convert would clip everything above 255).
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode in _GREY_16 else float(np.nanmax(values, initial=1.0))
        grey = np.clip(np.nan_to_num(values) * (255.0 / max(peak, 1.0)) + 0.5, 0, 255)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        # Composite on the letterbox grey so transparent areas look like padding to the model.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*(DEFAULT_PAD_VALUE,) * 3, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _upright(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; an unreadable EXIF block means "as stored", not a bad image."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # malformed EXIF raises many types; the pixels are still fine
        return image


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the declared size before any pixel is decoded."""
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image declares {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return image


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB in display orientation; first frame of animations.

    Raises ``ImageTooLargeError`` when the declared size exceeds ``max_pixels`` and
    ``ImageDecodeError`` for anything that is not a complete, decodable image (a Pillow error
    never escapes). Safe to call from several threads at once.
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with _open_checked(data, max_pixels) as image:
            image.load()  # the first frame; raises on truncation (LOAD_TRUNCATED_IMAGES off)
            rgb = _to_rgb(_upright(image))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image format (accepted: {', '.join(FORMATS)})"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:
        # Plugins raise OSError, ValueError, SyntaxError, struct.error, IndexError, ... on
        # hostile bytes: all mean "not a decodable image", never a server error.
        raise ImageDecodeError(f"image could not be decoded: {exc}") from None
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
        """(N,4) original-pixel boxes -> letterboxed-input pixels (not clipped)."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]] * self.scale + self.pad_x
        boxes[:, [1, 3]] = boxes[:, [1, 3]] * self.scale + self.pad_y
        return boxes


def letterbox(
    image: np.ndarray, size: tuple[int, int], *, pad_value: int = DEFAULT_PAD_VALUE
) -> tuple[np.ndarray, LetterboxTransform]:
    """HxWx3 uint8 -> (3, H_in, W_in) float32 0..1, aspect kept, padding centred.

    ``size`` is (height, width) of the model input.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be in 0..255, got {pad_value}")
    src_h, src_w = image.shape[:2]
    dst_h, dst_w = size
    scale = min(dst_w / src_w, dst_h / src_h)
    new_w = max(1, min(dst_w, round(src_w * scale)))
    new_h = max(1, min(dst_h, round(src_h * scale)))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    pad_x, pad_y = (dst_w - new_w) // 2, (dst_h - new_h) // 2
    canvas = np.full((dst_h, dst_w, 3), pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.asarray(resized)
    tensor = canvas.transpose(2, 0, 1).astype(np.float32)
    tensor *= np.float32(1 / 255)  # in place: one float copy of the input, not two
    # The effective scale per axis after rounding; use x's (differs from y's by < 1 px at most).
    transform = LetterboxTransform(new_w / src_w, float(pad_x), float(pad_y), src_w, src_h)
    return tensor, transform
