"""Image bytes -> letterboxed NCHW tensor, and the transform that maps boxes back.

Decoding is defensive: the declared size is checked against the pixel and per-side limits *before*
any pixel is decoded (decompression bombs), ``decode_cost`` prices an image from its header alone
(so a server can budget memory and CPU before spending them), truncated files are errors rather
than silently grey-padded, and EXIF orientation is applied so boxes come back in the orientation
the user sees.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from engines.errors import ImageDecodeError, ImageTooLargeError

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Images are resized in the server's worker threads, one each; OpenCV's own thread pool on top
# would compete with ONNX Runtime's for the same cores.
cv2.setNumThreads(1)
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


def _open_checked(data: bytes, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """Open (header only) and check the declared size before any pixel is decoded."""
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image declares {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if max_side is not None and max(width, height) > max_side:
        # Decoding cost grows with rows as well as pixels (Pillow allocates and walks each row):
        # 1 x 39,999,999 is under any pixel limit yet takes seconds and a GiB to decode.
        raise ImageTooLargeError(
            f"image declares {width}x{height} pixels; no side may exceed {max_side}"
        )
    return image


# Pillow keeps a pointer and an allocation per row, and its decoders do per-row work: a row
# costs about as much as this many bytes of pixels (measured on a 1 x 40M PNG: ~1 GiB, ~10 s).
ROW_COST_BYTES = 32
# deflate cannot compress better than 1032:1, so a PNG declaring more raw bytes than this per
# byte of file cannot be complete: refuse it before allocating its pixels.
PNG_MAX_RATIO = 1100
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel
# Huffman-coded JPEGs (baseline, extended, progressive, lossless) spend at least one bit on the
# DC coefficient of every 8x8 luma block; arithmetic-coded ones (SOF9-15) have no such floor.
_JPEG_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}


@dataclass(frozen=True)
class DecodeCost:
    """What decoding one image will cost, read from its header before any pixel is decoded."""

    width: int
    height: int
    stored_bits_per_pixel: int  # of the compressed stream (a 16-bit RGB PNG: 48)
    memory_bytes: int  # peak bytes decoding and letterboxing it is expected to hold
    work: int  # decode work in byte-equivalents: raw sample bytes plus per-row overhead

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _mode_bytes(mode: str) -> int:
    """Bytes per pixel of Pillow's in-memory storage for ``mode`` (RGB is stored as RGBX)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode in _GREY_16 else 4


def _png_bits(data: bytes) -> int | None:
    """Bits per pixel from the PNG IHDR (bit depth x channels); Pillow's mode hides 16-bit RGB."""
    if len(data) < 29 or data[12:16] != b"IHDR":
        return None
    depth, colour = data[24], data[25]
    return depth * _PNG_CHANNELS.get(colour, 4)


def _jpeg_sof(data: bytes) -> int | None:
    """The SOF marker of a JPEG (0xC0..0xCF), walking segments from the start."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xDA:  # start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, at + 2)
        at += 2 + length
    return None


def _check_complete(data: bytes, image: Image.Image, bits: int) -> None:
    """Refuse headers that promise more pixels than the bytes that follow could hold."""
    width, height = image.size
    if image.format == "PNG":
        raw = height * (1 + (width * bits + 7) // 8)
        if raw > PNG_MAX_RATIO * len(data):
            raise ImageDecodeError(
                f"PNG declares {width}x{height} pixels but holds only {len(data)} bytes: truncated"
            )
    elif image.format in ("JPEG", "MPO") and _jpeg_sof(data) in _JPEG_HUFFMAN_SOF:
        blocks = ((width + 7) // 8) * ((height + 7) // 8)
        if 8 * len(data) < blocks:
            raise ImageDecodeError(
                f"JPEG declares {width}x{height} pixels but holds only {len(data)} bytes: truncated"
            )


def decode_cost(data: bytes, *, max_pixels: int, max_side: int | None = None) -> DecodeCost:
    """Price decoding ``data`` from its header alone (cheap: no pixel is decoded).

    Raises what ``decode_image`` would for a declared size over the limits, an unrecognised
    format, or a header whose size the data could not hold (truncated).
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with _open_checked(data, max_pixels, max_side) as image:
            stored = _mode_bytes(image.mode)
            bits = (_png_bits(data) if image.format == "PNG" else None) or 8 * stored
            _check_complete(data, image, bits)
            width, height = image.size
            deep = image.mode in (*_GREY_16, "I", "F")
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image format (accepted: {', '.join(FORMATS)})"
        ) from None
    except Exception as exc:  # hostile headers raise many types (see decode_image)
        raise ImageDecodeError(f"image could not be decoded: {exc}") from None
    pixels = width * height
    # Alive at the peak: the decoded image, its RGB copy, the uint8 array and the copy letterbox
    # resizes from; deep grey adds two float32 planes and a uint8 one on the way to RGB.
    per_pixel = stored + 4 + 3 + 4 + (9 if deep else 0)
    rows = height * ROW_COST_BYTES
    return DecodeCost(
        width=width,
        height=height,
        stored_bits_per_pixel=bits,
        memory_bytes=pixels * per_pixel + rows,
        work=(pixels * bits + 7) // 8 + rows,
    )


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_side: int | None = None,
    draft_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB in display orientation; first frame of animations.

    ``draft_size`` (width, height): a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
    DCT scaling) as long as the result stays at least that large; other formats ignore it.

    Raises ``ImageTooLargeError`` when the declared size exceeds ``max_pixels`` and
    ``ImageDecodeError`` for anything that is not a complete, decodable image (a Pillow error
    never escapes). Safe to call from several threads at once.
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with _open_checked(data, max_pixels, max_side) as image:
            bits = (_png_bits(data) if image.format == "PNG" else None) or 8
            _check_complete(data, image, bits)
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", draft_size)  # a cheaper decode when the model input is small
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

    scale: float  # x scale (and y's, unless scale_y is given)
    pad_x: float
    pad_y: float
    src_width: int
    src_height: int
    # Each side is rounded to whole pixels, so the effective scales differ by up to half a pixel
    # over the image; mapping y with its own scale is what Ultralytics' scale_boxes does.
    scale_y: float | None = None

    @property
    def _sy(self) -> float:
        return self.scale if self.scale_y is None else self.scale_y

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N,4) input-pixel boxes -> original pixels, clipped to the image."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_x) / self.scale
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_y) / self._sy
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, self.src_width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, self.src_height)
        return boxes

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N,4) original-pixel boxes -> letterboxed-input pixels (not clipped)."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]] * self.scale + self.pad_x
        boxes[:, [1, 3]] = boxes[:, [1, 3]] * self._sy + self.pad_y
        return boxes


def _pillow_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # Antialiased when shrinking: the better input for a low-resolution model (YOLOv3-tiny's bus
    # score on bus.jpg is 0.59 with it, 0.33 with OpenCV's).
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _opencv_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # What Ultralytics' LetterBox feeds its models: with Pillow's instead, a trained YOLOv8n's
    # scores on bus.jpg move by up to 0.02 and its boxes by up to 4 px against `yolo predict`.
    resized: np.ndarray = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized


Resize = Literal["pillow", "opencv"]
RESIZERS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "pillow": _pillow_bilinear,
    "opencv": _opencv_linear,
}


def letterbox(
    image: np.ndarray,
    size: tuple[int, int],
    *,
    pad_value: int = DEFAULT_PAD_VALUE,
    resize: Resize = "pillow",
) -> tuple[np.ndarray, LetterboxTransform]:
    """HxWx3 uint8 -> (3, H_in, W_in) float32 0..1, aspect kept, padding centred.

    ``size`` is (height, width) of the model input; ``resize`` names the bilinear resize (the
    one the model was trained and evaluated with: ``opencv`` for Ultralytics models).
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
    resized = image if (new_w, new_h) == (src_w, src_h) else RESIZERS[resize](image, new_w, new_h)
    # Centred padding, the odd pixel at the bottom/right (Ultralytics: round(d / 2 - 0.1)).
    pad_x, pad_y = (dst_w - new_w) // 2, (dst_h - new_h) // 2
    canvas = np.full((dst_h, dst_w, 3), pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    tensor = canvas.transpose(2, 0, 1).astype(np.float32)
    tensor *= np.float32(1 / 255)  # in place: one float copy of the input, not two
    # The effective scale of each axis after rounding its side.
    transform = LetterboxTransform(
        new_w / src_w, float(pad_x), float(pad_y), src_w, src_h, scale_y=new_h / src_h
    )
    return tensor, transform
