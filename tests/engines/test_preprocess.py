"""Safe decoding and the letterbox round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engines.errors import ImageDecodeError, ImageTooLargeError
from engines.preprocess import decode_image, letterbox
from tests.service.test_bad_input_http import png_declaring

LIMIT = 40_000_000


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None].repeat(w, 1)
    return Image.fromarray(np.concatenate([x, y, 255 - x], axis=2))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", ImageDecodeError),
        (b"definitely not an image" * 20, ImageDecodeError),
        (encode(gradient(640, 480), "JPEG")[:600], ImageDecodeError),
        (encode(gradient(300, 300), "PNG")[:400], ImageDecodeError),
        (png_declaring(20000, 20000), ImageTooLargeError),
    ],
    ids=["empty", "random", "truncated-jpeg", "truncated-png", "png-bomb"],
)
def test_undecodable_input_is_a_typed_error(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_image(data, max_pixels=LIMIT)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        lambda: encode(gradient().convert("L"), "PNG"),
        lambda: encode(
            Image.fromarray((np.arange(64 * 48, dtype=np.uint16) * 20).reshape(48, 64)), "PNG"
        ),
        lambda: encode(gradient().convert("RGBA"), "PNG"),
        lambda: encode(gradient().convert("P"), "PNG"),
        lambda: encode(gradient().convert("CMYK"), "JPEG"),
        lambda: encode(
            gradient(),
            "GIF",
            save_all=True,
            append_images=[gradient().transpose(Image.Transpose.FLIP_LEFT_RIGHT)],
        ),
        lambda: encode(gradient(), "WEBP", save_all=True, append_images=[gradient()]),
    ],
    ids=["1x1", "gray", "16-bit", "rgba", "palette", "cmyk", "gif-anim", "webp-anim"],
)
def test_unusual_modes_decode_to_rgb(make: object) -> None:
    data = make()  # type: ignore[operator]
    image = decode_image(data, max_pixels=LIMIT)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_sixteen_bit_range_is_scaled_not_clipped() -> None:
    ramp = (np.arange(64, dtype=np.uint16) * 1024).reshape(1, 64).repeat(8, 0)
    image = decode_image(encode(Image.fromarray(ramp), "PNG"), max_pixels=LIMIT)
    assert image[0, -1, 0] > 240 and image[0, 0, 0] < 5  # full range kept


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = encode(gradient(64, 48), "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=LIMIT).shape == (64, 48, 3)


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(gradient(100, 100), "PNG")
    with pytest.raises(ImageTooLargeError, match="10000"):
        decode_image(data, max_pixels=9_999)


@pytest.mark.parametrize(
    ("w", "h"), [(810, 1080), (1280, 720), (100, 30), (30, 100), (416, 416), (2000, 1999), (7, 5)]
)
def test_letterbox_round_trip_within_one_pixel(w: int, h: int) -> None:
    image = np.zeros((h, w, 3), np.uint8)
    tensor, transform = letterbox(image, (416, 416))
    assert tensor.shape == (3, 416, 416) and tensor.dtype == np.float32
    rng = np.random.default_rng(w * h)
    for _ in range(20):
        x1, x2 = sorted(rng.uniform(0, w, 2))
        y1, y2 = sorted(rng.uniform(0, h, 2))
        box = np.array([[x1, y1, x2, y2]], np.float32)
        back = transform.to_original(transform.to_input(box))
        assert np.abs(back - box).max() <= 1.0


def test_letterbox_content_lands_where_the_transform_says() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = 255  # a white square in the middle
    tensor, transform = letterbox(image, (416, 416), pad_value=0)
    x1, y1, x2, y2 = transform.to_input(np.array([[90, 40, 110, 60]], np.float32))[0]
    ys, xs = np.nonzero(tensor[0] > 0.5)
    assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
    assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
