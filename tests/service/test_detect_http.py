"""Real photos through the real server over HTTP: classes and rough box positions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.service.scrape import Key, moved, scrape

pytestmark = pytest.mark.slow


def detect(server: Server, data: bytes, **params: Any) -> dict[str, Any]:
    with server.client() as client:
        r = client.post("/detect", files={"image": ("photo", data)}, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def of_label(body: dict[str, Any], label: str) -> list[list[float]]:
    return [d["box"] for d in body["detections"] if d["label"] == label]


def test_bus_has_people_and_the_bus(server: Server, photo: Callable[[str], bytes]) -> None:
    body = detect(server, photo("bus"))
    assert (body["width"], body["height"]) == (810, 1080)
    assert body["model"] == "yolov3-tiny-coco"
    assert body["precision"] == "fp32" and body["backend"] == "onnxruntime"
    people = of_label(body, "person")
    assert len(people) >= 3, body
    standing = [b for b in people if b[3] - b[1] > 300 and 350 < (b[1] + b[3]) / 2 < 800]
    assert len(standing) >= 3, people  # full-height pedestrians in front of the bus
    buses = of_label(body, "bus")
    assert buses, body
    x1, y1, x2, y2 = buses[0]
    assert x2 - x1 > 550 and y1 < 350 and 600 < y2 < 900, buses[0]
    for det in body["detections"]:
        bx1, by1, bx2, by2 = det["box"]
        assert 0 <= bx1 < bx2 <= 810 and 0 <= by1 < by2 <= 1080
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "postprocess", "total"}


def test_coffee_has_a_cup(server: Server, photo: Callable[[str], bytes]) -> None:
    body = detect(server, photo("coffee"))
    cups = of_label(body, "cup")
    assert cups, body
    x1, y1, x2, y2 = cups[0]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert 150 < cx < 450 and 100 < cy < 350 and x2 - x1 > 150, cups[0]


def test_zidane_has_two_people_left_and_right(
    server: Server, photo: Callable[[str], bytes]
) -> None:
    body = detect(server, photo("zidane"))
    people = of_label(body, "person")
    centres = sorted((b[0] + b[2]) / 2 for b in people)
    assert len(people) >= 2, body
    assert centres[0] < 640 < centres[-1], people


def test_raw_body_class_filter_and_thresholds(
    server: Server, photo: Callable[[str], bytes]
) -> None:
    with server.client() as client:
        r = client.post(
            "/detect",
            content=photo("bus"),
            headers={"content-type": "image/jpeg"},
            params={"classes": "bus", "conf": 0.3},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert {d["label"] for d in body["detections"]} == {"bus"}
    assert all(d["score"] >= 0.3 for d in body["detections"])
    assert r.headers["x-precision"] == "fp32"
    strict = detect(server, photo("bus"), conf=0.99)
    assert len(strict["detections"]) < len(detect(server, photo("bus"))["detections"])
    capped = detect(server, photo("bus"), max_det=1, conf=0.05)
    assert len(capped["detections"]) == 1


def test_several_images_in_one_request(server: Server, photo: Callable[[str], bytes]) -> None:
    files = [("image", ("a", photo("bus"))), ("image", ("b", photo("coffee")))]
    with server.client() as client:
        r = client.post("/detect", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["width"], x["height"]) for x in results] == [(810, 1080), (600, 400)]
    assert any(d["label"] == "bus" for d in results[0]["detections"])
    assert any(d["label"] == "cup" for d in results[1]["detections"])


def test_models_health_and_docs(server: Server) -> None:
    with server.client() as client:
        models = client.get("/models").json()
        assert models["default_model"] == "yolov3-tiny-coco"
        entry = models["models"][0]
        assert entry["layout"] == "yolov5" and entry["input_size"] == [416, 416]
        assert len(entry["classes"]) == 80 and entry["classes"][0] == "person"
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").json()["status"] == "ready"
        schema = client.get("/openapi.json").json()
        assert "/detect" in schema["paths"]
        assert "server" not in client.get("/health/live").headers  # no version banner


def test_a_request_moves_its_metrics_by_one(server: Server, photo: Callable[[str], bytes]) -> None:
    # The series exist at zero from start-up; only the difference shows this request counted.
    fp32 = {"model": "yolov3-tiny-coco", "precision": "fp32"}
    keys: dict[str, Key] = {
        "200": ("detect_requests_total", {**fp32, "status": "200"}),
        "duration": ("detect_request_duration_seconds_count", fp32),
        "+Inf bucket": ("detect_request_duration_seconds_bucket", {**fp32, "le": "+Inf"}),
        "images": ("detect_images_total", fp32),
    }
    before = scrape(server)
    detect(server, photo("coffee"))
    after = scrape(server)
    assert {name: moved(before, after, k) for name, k in keys.items()} == dict.fromkeys(keys, 1)


def test_concurrent_requests_are_batched(server: Server, photo: Callable[[str], bytes]) -> None:
    import concurrent.futures

    data = photo("bus")

    def one(_: int) -> int:
        # About batching, not deadlines: 16 at once on a loaded 2-core machine can take > 10 s.
        r = httpx.post(
            f"{server.url}/detect",
            files={"image": ("b", data)},
            params={"deadline_ms": 600_000},
            timeout=600,
        )
        assert r.status_code == 200, r.text
        return int(r.json()["batch_size"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(one, range(16)))
    assert max(sizes) > 1, sizes
