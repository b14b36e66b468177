"""What a client and a dashboard see under load: status codes, ``Retry-After`` values, and metric
values that add up to the traffic sent.

The engine is held at a gate (a file the test creates; see ``fault_engines``), so the queue holds
exactly the requests the test put there; every wait is on a metric the server exports, never on
a sleep (the one sleep holds a batch past its estimated time on purpose: the time passing is
what is tested).
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Server
from tests.service.fault_engines import FAULT_SERVER
from tests.service.scrape import Key, Samples, moved, scrape, value, wait_for

pytestmark = pytest.mark.slow
MODEL = "yolov3-tiny-coco"
M = {"model": MODEL}
BATCH_DELAY_S = 1.0  # >= 1 s per batch: ceil(3 x cost) and ceil(4 x cost) always differ
FAR = {"deadline_ms": 60_000}  # the queue, not the deadline, decides in the overload test


def key(name: str, **labels: str) -> Key:
    return name, {**M, **labels}


def small_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(buf, "JPEG")
    return buf.getvalue()


class Timed:
    """A /detect call with the time the client waited for it."""

    def __init__(self, server: Server, images: list[bytes], **params: Any) -> None:
        files = [("image", (f"i{i}", data)) for i, data in enumerate(images)]
        started = time.perf_counter()
        self.reply = httpx.post(f"{server.url}/detect", files=files, params=params, timeout=180)
        self.seconds = time.perf_counter() - started

    @property
    def status(self) -> int:
        return self.reply.status_code

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = self.reply.json()
        return body


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("gate") / "open"
    path.touch()
    yield path
    path.touch()  # never leave a server holding requests


def gated_server(factory: Callable[..., Server], gate: Path, **env: str) -> Server:
    return factory({"FAULT_GATE_FILE": str(gate), **env}, module=FAULT_SERVER)


def started_batches(server: Server) -> float:
    return value(scrape(server), key("detect_batch_size_count"))


def hold_one(
    server: Server, gate: Path, pool: concurrent.futures.Executor, image: bytes
) -> Future[Timed]:
    """Close the gate and send one request; return once its batch is inside the engine."""
    gate.unlink(missing_ok=True)
    batches = started_batches(server)
    held = pool.submit(Timed, server, [image], **FAR)
    wait_for(server, key("detect_batch_size_count"), batches + 1)
    return held


def queue_depth(server: Server) -> Key:
    return key("detect_queue_depth", precision="fp32")


def ewma_per_image(durations: list[float]) -> float:
    """The scheduler's running per-image cost after batches of one image (its EWMA, alpha 0.2)."""
    estimate = durations[0]
    for d in durations[1:]:
        estimate += 0.2 * (d - estimate)
    return estimate


def expected_retry_after(seconds: float) -> set[str]:
    """``Retry-After`` for an estimated wait: whole seconds, rounded up, at least 1 (both
    neighbours only where float noise could decide the rounding)."""
    near = round(seconds)
    if abs(seconds - near) < 1e-6:
        return {str(max(1, near)), str(max(1, near + 1))}
    return {str(max(1, math.ceil(seconds)))}


def test_full_queue_is_503_with_retry_after_from_the_measured_cost(
    server_factory: Callable[..., Server], gate: Path, photo: Callable[[str], bytes]
) -> None:
    """One image per batch, room for two in the queue, every batch at least 1 s."""
    server = gated_server(
        server_factory,
        gate,
        DETECT_MAX_BATCH="1",
        DETECT_MAX_QUEUE="2",
        FAULT_DELAY_S=str(BATCH_DELAY_S),
    )
    image = small_jpeg()
    # Teach the scheduler its cost; each batch's exact duration is what the metric recorded.
    durations = []
    for _ in range(2):
        before = scrape(server)
        assert Timed(server, [image], **FAR).status == 200
        batch_time = moved(before, scrape(server), key("detect_inference_duration_seconds_sum"))
        durations.append(batch_time)
    per_image = ewma_per_image(durations)
    assert per_image >= BATCH_DELAY_S
    before = scrape(server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = hold_one(server, gate, pool, image)
        # Held past its estimate (plus the 10 % the test's copy may be off), the running batch
        # counts as about to finish: the wait is then exactly the queue's, whatever the delay
        # between the refusals on a loaded machine.
        time.sleep(per_image * 1.5)
        queued = [pool.submit(Timed, server, [image], **FAR)]
        wait_for(server, queue_depth(server), 1)
        # Two more images do not fit beside the one queued: shed at the door, before decoding.
        pair = Timed(server, [image, image], **FAR)
        queued.append(pool.submit(Timed, server, [image], **FAR))
        wait_for(server, queue_depth(server), 2)
        single = Timed(server, [image], **FAR)
        gate.touch()
        accepted = [running.result(), *(f.result() for f in queued)]
    assert [r.status for r in accepted] == [200, 200, 200], [r.reply.text for r in accepted]
    for refused, ahead in ((pair, 1), (single, 2)):
        assert refused.status == 503, refused.reply.text
        assert refused.json()["error"]["code"] == "overloaded"
        # The wait for what is queued ahead and this request, in seconds (the running batch is
        # overdue, so it adds nothing). The server's own per-image figure also follows warm-up
        # and live batch times, so the test's EWMA is a close, not exact, copy of it: within 10 %.
        low = expected_retry_after(per_image * (ahead + 1) * 0.9)
        high = expected_retry_after(per_image * (ahead + 1) * 1.1)
        got = int(refused.reply.headers["Retry-After"])
        assert min(map(int, low)) <= got <= max(map(int, high)), (ahead, per_image, got)
    # A batch costs >= 1 s, so one more image ahead always means a later Retry-After.
    assert int(single.reply.headers["Retry-After"]) > int(pair.reply.headers["Retry-After"])
    after = scrape(server)
    assert moved(before, after, key("detect_rejected_total", reason="queue_full")) == 2
    assert moved(before, after, key("detect_requests_total", status="503")) == 2
    assert moved(before, after, key("detect_requests_total", status="200")) == 3
    assert moved(before, after, key("detect_preprocess_duration_seconds_count")) == 3


def v2_infer(server: Server) -> httpx.Response:
    """A KServe v2 request (one raw FP32 tensor): these routes take no deadline from the client."""
    raw = np.zeros((1, 3, 416, 416), "<f4").tobytes()
    inputs = [{"name": "images", "datatype": "FP32", "shape": [1, 3, 416, 416]}]
    head = json.dumps({"inputs": [{**inputs[0], "parameters": {"binary_data_size": len(raw)}}]})
    return httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=head.encode() + raw,
        headers={"Inference-Header-Content-Length": str(len(head.encode()))},
        timeout=120,
    )


def v2_stats(server: Server) -> dict[str, int]:
    """Successful and failed requests in the KServe v2 statistics of the FP32 variant."""
    reply = httpx.get(f"{server.url}/v2/models/{MODEL}.fp32/stats", timeout=30)
    stats = reply.json()["model_stats"][0]["inference_stats"]
    return {outcome: int(stats[outcome]["count"]) for outcome in ("success", "fail")}


def test_an_unmeetable_server_deadline_is_overload_a_client_deadline_a_timeout(
    server_factory: Callable[..., Server], gate: Path
) -> None:
    """Every batch takes >= 1 s and the server's own deadline is 0.5 s: a request that did not
    set a deadline (KServe v2 never does; /detect without ``deadline_ms``) is shed as 503
    ``overloaded``; the same budget set by the client is 504 ``deadline_exceeded``."""
    server = gated_server(
        server_factory,
        gate,
        DETECT_MAX_BATCH="1",
        FAULT_DELAY_S=str(BATCH_DELAY_S),
        DETECT_DEFAULT_DEADLINE_MS="500",
    )
    image = small_jpeg()
    assert Timed(server, [image], **FAR).status == 200  # the scheduler learns a batch's cost
    before = scrape(server)
    v2 = v2_infer(server)
    unset = Timed(server, [image])
    client_set = Timed(server, [image], deadline_ms=500)
    assert v2.status_code == 503, v2.text
    assert "deadline cannot be met" in v2.json()["error"]  # the v2 protocol's error shape
    assert (unset.status, client_set.status) == (503, 504), (
        unset.reply.text,
        client_set.reply.text,
    )
    assert unset.json()["error"]["code"] == "overloaded"
    assert client_set.json()["error"]["code"] == "deadline_exceeded"
    for reply in (v2, unset.reply, client_set.reply):
        assert int(reply.headers["Retry-After"]) >= 1
    after = scrape(server)
    assert moved(before, after, key("detect_rejected_total", reason="deadline")) == 3
    assert moved(before, after, key("detect_requests_total", status="503")) == 2
    assert moved(before, after, key("detect_requests_total", status="504")) == 1
    assert moved(before, after, key("detect_batch_size_count")) == 0  # nothing reached the engine


def test_metric_values_add_up_to_the_traffic_sent(
    server_factory: Callable[..., Server], gate: Path, photo: Callable[[str], bytes]
) -> None:
    """A batch of 1, then a batch of 4 formed behind it, a bad image, a hopeless deadline."""
    server = gated_server(server_factory, gate, DETECT_MAX_BATCH="4")
    bus = photo("bus")
    before = scrape(server)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        first = hold_one(server, gate, pool, bus)
        behind = [pool.submit(Timed, server, [bus], **FAR) for _ in range(4)]
        wait_for(server, queue_depth(server), 4)
        gate.touch()
        ok = [first.result(), *(f.result() for f in behind)]
    bad = Timed(server, [b"not an image at all"])
    hopeless = Timed(server, [bus], deadline_ms=1)
    after = scrape(server)
    assert [r.status for r in ok] == [200] * 5, [r.reply.text for r in ok]
    assert (bad.status, hopeless.status) == (400, 504), (bad.reply.text, hopeless.reply.text)
    bodies = [r.json() for r in ok]
    assert [b["batch_size"] for b in bodies] == [1, 4, 4, 4, 4]
    check_counters(before, after)
    check_histograms(before, after, ok, [bad, hopeless], bodies)
    assert value(after, key("detect_inflight_requests")) == 0
    assert value(after, queue_depth(server)) == 0


def check_counters(before: Samples, after: Samples) -> None:
    def counted(name: str, **labels: str) -> float:
        return moved(before, after, key(name, **labels))

    assert counted("detect_requests_total", precision="fp32", status="200") == 5
    assert counted("detect_requests_total", precision="fp32", status="400") == 1
    assert counted("detect_requests_total", precision="fp32", status="504") == 1
    assert counted("detect_requests_total") == 7
    assert counted("detect_precision_selected_total", requested="auto", selected="fp32") == 7
    assert counted("detect_rejected_total", reason="deadline") == 1
    assert counted("detect_rejected_total", reason="queue_full") == 0
    assert counted("detect_images_total", precision="fp32") == 5  # images, not requests or batches
    # Two batches ran: one of 1 image, one of 4.
    assert counted("detect_batch_size_count", precision="fp32") == 2
    assert counted("detect_batch_size_sum", precision="fp32") == 5
    assert counted("detect_batch_size_bucket", precision="fp32", le="1.0") == 1
    assert counted("detect_batch_size_bucket", precision="fp32", le="2.0") == 1
    assert counted("detect_batch_size_bucket", precision="fp32", le="4.0") == 2


def check_histograms(
    before: Samples,
    after: Samples,
    ok: list[Timed],
    failed: list[Timed],
    bodies: list[dict[str, Any]],
) -> None:
    """Histogram sums are the very times the replies report (``timing_ms``, rounded to 0.01 ms),
    and each request's duration lies within what its client waited."""

    def observed(name: str) -> tuple[float, float]:
        count = moved(before, after, key(f"{name}_count", precision="fp32"))
        return count, moved(before, after, key(f"{name}_sum", precision="fp32"))

    def reported(stage: str, bodies: list[dict[str, Any]]) -> float:
        return sum(b["timing_ms"][stage] for b in bodies) / 1000

    rounding = 0.005e-3 * len(bodies) + 1e-9
    count, total = observed("detect_queue_wait_seconds")
    assert count == 5 and total == pytest.approx(reported("queue", bodies), abs=rounding)
    count, total = observed("detect_inference_duration_seconds")
    one_per_batch = [bodies[0], bodies[1]]  # every image of a batch reports that batch's time
    assert len({b["timing_ms"]["inference"] for b in bodies[1:]}) == 1
    assert count == 2 and total == pytest.approx(reported("inference", one_per_batch), abs=1e-4)
    count, total = observed("detect_preprocess_duration_seconds")
    assert count == 5 and total == pytest.approx(reported("decode", bodies), abs=rounding)
    count, total = observed("detect_postprocess_duration_seconds")
    assert count == 5 and total == pytest.approx(reported("postprocess", bodies), abs=rounding)
    count, total = observed("detect_request_duration_seconds")
    assert count == 7
    # Inside the server's handling of a request, so no longer than its clients waited, and at
    # least the replies' own end-to-end times (measured a hair later, from inside the handler).
    assert total <= sum(r.seconds for r in ok + failed)
    assert total >= reported("total", bodies) - 1e-3 * len(bodies)


def test_a_client_that_leaves_has_its_queued_image_dropped(
    server_factory: Callable[..., Server], gate: Path, photo: Callable[[str], bytes]
) -> None:
    """Its image never reaches the engine, and the request is counted as 499 (and, in the v2
    statistics, as neither a success nor a failure, as Triton counts it)."""
    server = gated_server(server_factory, gate, DETECT_MAX_BATCH="1")
    bus = photo("bus")
    before = scrape(server)
    stats_before = v2_stats(server)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = hold_one(server, gate, pool, bus)
        boundary = "leaving"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="b"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + bus
            + f"\r\n--{boundary}--\r\n".encode()
        )
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(
                b"POST /detect?deadline_ms=60000 HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_for(server, queue_depth(server), 1)
        # The connection is closed: the server notices and cancels the queued image.
        wait_for(server, key("detect_requests_total", status="499"), 1)
        gate.touch()
        assert held.result().status == 200
    after = scrape(server)
    assert moved(before, after, key("detect_images_total")) == 1  # only the held request's
    assert moved(before, after, key("detect_rejected_total", reason="cancelled")) == 1
    assert value(after, queue_depth(server)) == 0
    stats_after = v2_stats(server)
    assert stats_after["success"] - stats_before["success"] == 1  # the held request
    assert stats_after["fail"] - stats_before["fail"] == 0


def test_a_grpc_call_the_client_cancels_is_counted_as_cancelled(
    server_factory: Callable[..., Server], gate: Path, photo: Callable[[str], bytes]
) -> None:
    """gRPC cancels the handler itself (no disconnect to watch, unlike HTTP): the queued image
    is dropped and the request is counted 499, a success or failure in no statistics."""
    import tritonclient.grpc as grpcclient  # only here: its descriptors and ours share a pool

    server = gated_server(server_factory, gate, DETECT_MAX_BATCH="1", DETECT_GRPC_PORT="any")
    client = grpcclient.InferenceServerClient(server.grpc_address())
    bus = photo("bus")
    before = scrape(server)
    stats_before = v2_stats(server)
    answers: list[object] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = hold_one(server, gate, pool, bus)
        image = grpcclient.InferInput("IMAGE", [1], "BYTES")
        image.set_data_from_numpy(np.array([bus], dtype=object))
        call = client.async_infer(
            f"{MODEL}.detect", [image], callback=lambda result, error: answers.append(error)
        )
        wait_for(server, queue_depth(server), 1)
        call.cancel()
        wait_for(server, key("detect_requests_total", status="499"), 1)
        gate.touch()
        assert held.result().status == 200
    after = scrape(server)
    assert moved(before, after, key("detect_requests_total", status="500")) == 0
    assert moved(before, after, key("detect_images_total")) == 1  # only the held request's
    assert moved(before, after, key("detect_rejected_total", reason="cancelled")) == 1
    stats_after = v2_stats(server)
    assert stats_after["success"] - stats_before["success"] == 1  # the held request
    assert stats_after["fail"] - stats_before["fail"] == 0
    client.close()
