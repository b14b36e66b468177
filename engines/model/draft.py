"""Decoding a photo at reduced scale when the model input is much smaller than it.

A 12 MP phone photo letterboxed into a 416-pixel input throws away 98 % of its decoded pixels.
libjpeg can decode at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients (Pillow's
``Image.draft``), which costs a fraction of a full decode and is itself a good low-pass
downsample. The pipeline asks for the smallest scale that still covers the letterboxed size, so
the final resize always shrinks (never enlarges) the image, and maps boxes back to the photo's
full-size pixels.
"""

from __future__ import annotations

import io
import math

from PIL import Image

from engines.model.preprocess import LetterboxTransform


def stored_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a JPEG's header declares (before EXIF rotation); None for other formats
    or a header Pillow cannot read (the full decode then reports why)."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            return image.size
    except Exception:  # anything unreadable is the full decoder's to refuse, with its message
        return None


def draft_request(stored: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """The smallest decode size (width, height) that still covers the letterboxed image, in
    either orientation (EXIF rotation is applied after decoding)."""
    width, height = stored
    in_h, in_w = input_size
    scale = min(in_w / width, in_h / height, in_w / height, in_h / width, 1.0)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def full_size(stored: tuple[int, int], decoded: tuple[int, int]) -> tuple[int, int]:
    """The photo's display (width, height) at full scale, given the reduced decode's display
    size: rotated by EXIF when the decoded aspect matches the stored one turned on its side."""
    width, height = stored
    dec_w, dec_h = decoded
    upright = abs(width / dec_w - height / dec_h)
    turned = abs(height / dec_w - width / dec_h)
    return (height, width) if turned < upright else (width, height)


def to_full_size(transform: LetterboxTransform, full: tuple[int, int]) -> LetterboxTransform:
    """The letterbox transform of a reduced decode, restated for the full-size photo."""
    factor = transform.src_width / full[0]
    return LetterboxTransform(
        transform.scale * factor, transform.pad_x, transform.pad_y, full[0], full[1]
    )
