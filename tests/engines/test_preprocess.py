"""Safe decoding and the letterbox round trip."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engines.errors import ImageDecodeError, ImageTooLargeError
from engines.model.preprocess import decode_image, letterbox

LIMIT = 40_000_000


def png_declaring(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose IHDR claims ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # far too little data for the declared size
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def noise(w: int, h: int) -> Image.Image:
    """Incompressible pixels, so truncating the file cuts into the pixel data."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def solid(
    color: tuple[int, ...], mode: str = "RGB", size: tuple[int, int] = (32, 24)
) -> Image.Image:
    return Image.new(mode, size, color)


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
        (encode(noise(640, 480), "JPEG")[:-4000], ImageDecodeError),
        (encode(gradient(300, 300), "PNG")[:400], ImageDecodeError),
        (encode(noise(300, 300), "PNG")[:-5000], ImageDecodeError),
        (png_declaring(20000, 20000), ImageTooLargeError),
        (png_declaring(0, 10), ImageDecodeError),
        (encode(gradient(), "EPS"), ImageDecodeError),  # would run Ghostscript if opened
        (b"\xff\xd8\xff" + bytes(range(256)) * 4, ImageDecodeError),
    ],
    ids=[
        "empty",
        "random",
        "truncated-jpeg-header",
        "truncated-jpeg-scan",
        "truncated-png-header",
        "truncated-png-idat",
        "png-bomb",
        "png-zero-width",
        "eps-not-allowed",
        "jpeg-magic-garbage",
    ],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
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
    exif[0x0112] = 6  # "rotate 90 degrees clockwise for display"
    stored = decode_image(encode(noise(64, 48), "JPEG", quality=95), max_pixels=LIMIT)
    shown = decode_image(
        encode(noise(64, 48), "JPEG", quality=95, exif=exif.tobytes()), max_pixels=LIMIT
    )
    # Same compressed pixels; only the EXIF tag differs, so the rotation must be exact.
    assert shown.shape == (64, 48, 3)
    np.testing.assert_array_equal(shown, np.rot90(stored, k=-1))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_reject_the_pixels() -> None:
    data = encode(gradient(), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert decode_image(data, max_pixels=LIMIT).shape == (48, 64, 3)


@pytest.mark.parametrize(
    ("data", "expected", "tolerance"),
    [
        (encode(solid((9, 200, 30), size=(1, 1)), "PNG"), (9, 200, 30), 0),
        (encode(solid(77, "L"), "PNG"), (77, 77, 77), 0),
        (encode(solid((255, 0, 0)), "PNG"), (255, 0, 0), 0),
        (encode(solid((10, 20, 30, 0), "RGBA"), "PNG"), (114, 114, 114), 0),  # transparent
        (encode(solid((10, 20, 30, 255), "RGBA"), "PNG"), (10, 20, 30), 0),
        (encode(solid((0, 255, 255, 0), "CMYK"), "JPEG", quality=95), (255, 0, 0), 8),
        (encode(solid(40000, "I;16"), "PNG"), (156, 156, 156), 1),
        (encode(solid((200, 100, 0)).quantize(4), "PNG"), (200, 100, 0), 0),
    ],
    ids=["1x1", "gray", "rgb", "rgba-clear", "rgba-opaque", "cmyk-jpeg", "16-bit", "palette"],
)
def test_pixel_values_survive_mode_conversion(
    data: bytes, expected: tuple[int, int, int], tolerance: int
) -> None:
    image = decode_image(data, max_pixels=LIMIT)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert np.abs(image.astype(int) - expected).max() <= tolerance


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(fmt: str) -> None:
    frames = [solid((255, 0, 0)), solid((0, 0, 255)), solid((0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    image = decode_image(data, max_pixels=LIMIT)
    assert image.shape == (24, 32, 3)
    assert np.abs(image.astype(int) - (255, 0, 0)).max() <= 4


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(gradient(100, 100), "PNG")
    with pytest.raises(ImageTooLargeError, match="10000"):
        decode_image(data, max_pixels=9_999)


@pytest.mark.parametrize("size", [(416, 416), (384, 640)], ids=["square", "wide-input"])
@pytest.mark.parametrize(
    ("w", "h"), [(810, 1080), (1280, 720), (100, 30), (30, 100), (416, 416), (2000, 1999), (7, 5)]
)
def test_letterbox_round_trip_within_one_pixel(w: int, h: int, size: tuple[int, int]) -> None:
    image = np.zeros((h, w, 3), np.uint8)
    tensor, transform = letterbox(image, size)
    assert tensor.shape == (3, *size) and tensor.dtype == np.float32
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


@pytest.mark.parametrize(
    ("image", "pad"),
    [
        (np.zeros((4, 4), np.uint8), 114),
        (np.zeros((4, 4, 3), np.float32), 114),
        (np.zeros((4, 4, 3), np.uint8), 300),
    ],
    ids=["2d", "float", "pad-range"],
)
def test_letterbox_rejects_what_it_cannot_represent(image: np.ndarray, pad: int) -> None:
    with pytest.raises(ValueError):
        letterbox(image, (32, 32), pad_value=pad)


def test_opencv_letterbox_is_ultralytics_layout() -> None:
    """cv2 bilinear resize, centred 114 padding with the odd pixel at the bottom/right, and a
    gain per axis (Ultralytics' LetterBox and scale_boxes)."""
    import cv2

    image = np.random.default_rng(3).integers(0, 256, (101, 203, 3), dtype=np.uint8)
    tensor, transform = letterbox(image, (64, 96), resize="opencv")
    new_w, new_h = 96, round(101 * 96 / 203)  # 48
    expected = np.full((64, 96, 3), 114, np.uint8)
    top = round((64 - new_h) / 2 - 0.1)
    expected[top : top + new_h] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal((tensor.transpose(1, 2, 0) * 255).round().astype(np.uint8), expected)
    corner = transform.to_original(np.array([[0, top, 96, top + new_h]], np.float32))[0]
    assert corner.tolist() == pytest.approx([0, 0, 203, 101], abs=1e-3)
