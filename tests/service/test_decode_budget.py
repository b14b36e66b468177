"""Decode cost from headers, and the per-process decode budget (no server needed)."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from engines.errors import ImageDecodeError, ImageTooLargeError
from engines.model.preprocess import DecodeCost, decode_cost, decode_image
from service.scheduler import DecodeBudget, DecodeBusy, DecodeTooCostly
from service.scheduler.errors import DeadlineUnmeetable


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    """A complete PNG of zeros: tiny on the wire, ``height`` rows when decoded."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = 1 + (width * depth * channels + 7) // 8
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\0" * row * height, 9)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def jpeg_claiming(width: int, height: int, keep: int) -> bytes:
    """A real JPEG whose SOF is patched to ``width`` x ``height``, cut to ``keep`` bytes + EOI."""
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue()[:keep] + b"\xff\xd9")
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def test_a_one_pixel_wide_bomb_is_refused_by_its_side_before_decoding() -> None:
    bomb = png_bomb(1, 39_999_999)
    assert len(bomb) < 100_000
    cost = decode_cost(bomb, max_pixels=40_000_000)  # under the pixel limit ...
    assert cost.work > 1_000_000_000 and cost.memory_bytes > 1_000_000_000  # ... but not cheap
    with pytest.raises(ImageTooLargeError, match="no side may exceed"):
        decode_cost(bomb, max_pixels=40_000_000, max_side=20_000)


def test_png_bit_depth_comes_from_ihdr() -> None:
    deep = decode_cost(png_bomb(64, 64, depth=16, colour=2), max_pixels=10**6)
    shallow = decode_cost(png_bomb(64, 64, depth=8, colour=2), max_pixels=10**6)
    assert (deep.stored_bits_per_pixel, shallow.stored_bits_per_pixel) == (48, 24)
    assert deep.work > shallow.work


def test_headers_promising_more_than_the_data_holds_are_truncated() -> None:
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_cost(jpeg_claiming(6000, 6000, 25_000), max_pixels=40_000_000)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(jpeg_claiming(6000, 6000, 25_000), max_pixels=40_000_000)
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 6000, 6000, 8, 2, 0, 0, 0))
    lying_png = b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(b"\0" * 100))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_cost(lying_png, max_pixels=40_000_000)
    honest = jpeg_claiming(600, 600, 10**9)  # nothing cut, nothing patched
    assert decode_cost(honest, max_pixels=10**6).pixels == 360_000


def cost(memory: int, work: int = 1000) -> DecodeCost:
    return DecodeCost(width=1, height=1, stored_bits_per_pixel=8, memory_bytes=memory, work=work)


def test_budget_holds_memory_in_flight_and_serves_first_come_first_served() -> None:
    release = threading.Event()
    order: list[str] = []

    def decode(data: bytes) -> str:
        release.wait(5)
        order.append(data.decode())
        return data.decode()

    async def main() -> None:
        budget = DecodeBudget(memory_bytes=100, workers=4)
        far = time.monotonic() + 30
        first = asyncio.create_task(budget.run(cost(60), decode, b"a", far))
        second = asyncio.create_task(budget.run(cost(60), decode, b"b", far))
        third = asyncio.create_task(budget.run(cost(30), decode, b"c", far))
        await asyncio.sleep(0.05)
        assert budget._in_use == 60  # b waits for memory; c, behind it, waits too (FIFO)
        release.set()
        assert await asyncio.gather(first, second, third) == ["a", "b", "c"]
        assert budget._in_use == 0
        budget.close()

    asyncio.run(main())


def test_budget_refuses_what_could_never_fit_or_never_be_in_time() -> None:
    async def main() -> None:
        budget = DecodeBudget(memory_bytes=100, workers=1)
        with pytest.raises(DecodeTooCostly):
            budget.check([cost(101)], time.monotonic() + 30)
        budget.seconds_per_unit = 1e-3  # 1 s per 1000 units
        with pytest.raises(DeadlineUnmeetable):  # alone, it needs 1 s
            budget.check([cost(10)], time.monotonic() + 0.5)
        gate = threading.Event()
        running = asyncio.create_task(
            budget.run(cost(10, 5000), lambda d: gate.wait(5), b"", time.monotonic() + 30)
        )
        await asyncio.sleep(0.05)
        with pytest.raises(DecodeBusy) as busy:  # 5 s of decoding ahead of 1 s of its own
            budget.check([cost(10)], time.monotonic() + 3)
        assert busy.value.retry_after_s == pytest.approx(5.0, rel=0.1)
        gate.set()
        await running
        budget.close()

    asyncio.run(main())


def test_a_cancelled_decode_keeps_its_memory_until_the_thread_finishes() -> None:
    gate = threading.Event()

    async def main() -> None:
        budget = DecodeBudget(memory_bytes=100, workers=1)
        task = asyncio.create_task(
            budget.run(cost(80), lambda d: gate.wait(5), b"", time.monotonic() + 30)
        )
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert budget._in_use == 80  # the thread is still decoding: its memory is still in use
        gate.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if budget._in_use == 0:
                break
        assert budget._in_use == 0
        budget.close()

    asyncio.run(main())
