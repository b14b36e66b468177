"""Where KServe v2 JSON is parsed and encoded, so the event loop stays free.

``json.loads``, ``json.dumps`` and list <-> array conversions are single C calls that hold the GIL
from start to end: a 16 MiB JSON tensor takes about a second to parse, and a worker *thread* would
still stall the event loop (and ``/health/live``) for all of it. Bodies and replies over
``BIG_BYTES`` are therefore handled in a worker process of their own (started on first use);
small ones in a thread, where the hand-over would cost more than the work.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from service.api.kserve_codec import InferRequest, decode_inputs, encode_outputs, parse_request
from service.errors import Overloaded

BIG_BYTES = 1024 * 1024
Arrays = dict[str, np.ndarray]


def parse_and_decode(
    body: bytes, header_length: str | None, max_elements: int
) -> tuple[InferRequest, Arrays]:
    """Body -> (validated request without its tensor data, named input arrays)."""
    request, binary = parse_request(body, header_length)
    arrays = decode_inputs(request, binary, max_elements)
    # The JSON data is now in ``arrays``: do not carry (or pickle back) the lists as well.
    bare = [spec.model_copy(update={"data": None}) for spec in request.inputs]
    return request.model_copy(update={"inputs": bare}), arrays


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when the server is gone. A pool worker blocks on its
    task queue, whose write end its siblings also hold, so a server killed outright (SIGKILL,
    OOM) would otherwise leave it waiting forever, holding its memory."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class CodecPool:
    """Runs v2 parsing and encoding in a thread (small) or a worker process (big)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def parse(
        self, body: bytes, header_length: str | None, max_elements: int
    ) -> tuple[InferRequest, Arrays]:
        if len(body) < BIG_BYTES:
            return await run_in_threadpool(parse_and_decode, body, header_length, max_elements)
        parsed: tuple[InferRequest, Arrays] = await self._in_process(
            parse_and_decode, body, header_length, max_elements
        )
        return parsed

    async def encode(
        self, request: InferRequest, outputs: Arrays, model: str, extra: dict[str, Any]
    ) -> tuple[bytes, dict[str, str]]:
        # JSON text is about 10 bytes per value, whatever the dtype.
        if sum(a.size for a in outputs.values()) * 10 < BIG_BYTES:
            return await run_in_threadpool(encode_outputs, request, outputs, model, extra)
        encoded: tuple[bytes, dict[str, str]] = await self._in_process(
            encode_outputs, request, outputs, model, extra
        )
        return encoded

    async def _in_process(self, func: Any, *args: Any) -> Any:
        if self._pool is None:
            # spawn, not fork: the server process runs engine threads that a fork would copy
            # half-way through their work.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=context,
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)
        except BrokenProcessPool:  # the worker died (killed for memory?): a fresh one next time
            self._pool = None
            raise Overloaded("the v2 codec worker restarted; retry", retry_after_s=1) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
