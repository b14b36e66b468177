"""Draw detections onto the photo they came from (``/detect?format=image``, ``predict --save``).

The photo is decoded the way the pipeline decodes it (display orientation, RGB), so boxes in
original-image pixels land where they belong.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from engines.model.preprocess import decode_image

ImageFormat = Literal["jpeg", "png"]
MEDIA_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png"}


def _colour(class_id: int) -> tuple[int, int, int]:
    """A stable, saturated colour per class (golden-ratio hue steps keep neighbours apart)."""
    hue = (class_id * 0.618034) % 1.0
    r, g, b = (
        int(255 * max(0.0, min(1.0, abs((hue * 6 + k) % 6 - 3) - 1))) for k in (0.0, 4.0, 2.0)
    )
    return r, g, b


def annotate(
    photo: bytes,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    scores: Sequence[float],
    class_ids: Sequence[int],
    *,
    max_pixels: int,
    fmt: ImageFormat = "jpeg",
) -> bytes:
    """The photo with a box and ``label score`` per detection, encoded as JPEG or PNG."""
    image = Image.fromarray(decode_image(photo, max_pixels=max_pixels))
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 400))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 50)))
    for box, label, score, class_id in zip(boxes, labels, scores, class_ids, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        colour = _colour(int(class_id))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        lift = bottom - top + 2 * width
        y_text = y1 - lift if y1 - lift >= 0 else y1  # inside the box at the top edge
        draw.rectangle((x1, y_text, x1 + right - left + 2 * width, y_text + lift), fill=colour)
        draw.text((x1 + width, y_text + width - (top - y1)), text, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def image_size(encoded: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(encoded)) as image:
        return image.size
