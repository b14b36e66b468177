"""The live precision audit against real servers: a drifting INT8 engine, and the real one.

Requests are paced (each waits for its shadow run) so that no sample is dropped: dropping under
load is tested in process (test_audit.py), here every sample must count.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from engines.build.accuracy import agreement
from engines.build.int8.calibration import ImageSet
from engines.build.validation import detect_all
from engines.model.pipeline import load_model_pipeline
from engines.model.preprocess import decode_image
from engines.precision import Precision
from engines.runtime.onnxruntime import OnnxRuntimeEngine
from engines.sources.sample_images import SAMPLE_IMAGES, sample_image
from tests.conftest import DEFAULT_MODEL, REPO, Server, require_tool
from tests.service.drift_engines import DRIFT_SERVER

pytestmark = pytest.mark.slow
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
INT8 = {"model": DEFAULT_MODEL, "precision": "int8"}
# Photos on which the real INT8 build agrees with FP32 well over its 0.95 budget (0.99 pooled),
# so the first phase of the drift test cannot demote it by itself.
STEADY_PHOTOS = ("bus", "coffee", "motorcycle_left")


def metric(server: Server, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def detect(server: Server, data: bytes, precision: str) -> httpx.Response:
    r = httpx.post(
        f"{server.url}/detect",
        files={"image": ("i", data)},
        params={"precision": precision},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r


def wait_for_samples(server: Server, count: int, timeout_s: float = 60) -> None:
    give_up = time.monotonic() + timeout_s
    while (metric(server, "detect_audit_samples_total", **INT8) or 0) < count:
        dropped = sum(
            metric(server, "detect_audit_dropped_total", **INT8, reason=r) or 0
            for r in ("budget", "backlog", "busy", "unavailable", "error")
        )
        assert dropped == 0, f"{dropped} shadow runs dropped on an idle server"
        assert time.monotonic() < give_up, f"fewer than {count} shadow runs after {timeout_s} s"
        time.sleep(0.1)


def int8_entry(server: Server) -> tuple[dict[str, Any], str]:
    """(the int8 variant as ``GET /models`` lists it, the model's current auto precision)."""
    body = httpx.get(f"{server.url}/models", timeout=30).json()
    model = next(m for m in body["models"] if m["name"] == DEFAULT_MODEL)
    variant = next(v for v in model["variants"] if v["precision"] == "int8")
    return variant, model["auto_precision"]


@pytest.fixture(scope="module")
def int8_preferred(built_engines: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session build, with INT8 recorded as the fastest variant, so `auto` (at a 0.95
    budget) prefers it whatever this loaded machine happened to time during the build."""
    engines = tmp_path_factory.mktemp("engines-int8-first")
    shutil.copytree(built_engines / DEFAULT_MODEL, engines / DEFAULT_MODEL)
    path = engines / DEFAULT_MODEL / "manifest.json"
    manifest = json.loads(path.read_text())
    timed = [v["timings"]["latency_ms"] for v in manifest["variants"] if v.get("timings")]
    slowest = max(ms for latency in timed for ms in latency.values())
    for v in manifest["variants"]:
        if v["precision"] == "int8":
            latency = v["timings"]["latency_ms"]
            v["timings"]["latency_ms"] = {b: slowest / 10 for b in latency}
    path.write_text(json.dumps(manifest))
    return engines


def test_drifting_int8_falls_under_budget_alerts_and_is_demoted(
    server_factory: Callable[..., Server],
    int8_preferred: Path,
    photo: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    steady = len(STEADY_PHOTOS) * 2
    keep = tmp_path / "keep"
    server = server_factory(
        {
            "DETECT_ENGINES_DIR": str(int8_preferred),
            "DRIFT_AFTER": str(steady),
            "DRIFT_SLOW_OTHERS": "3",  # `auto` ranks on live speed: make INT8 clearly fastest
            "DETECT_MAX_BATCH": "1",  # one request = one INT8 batch, so DRIFT_AFTER counts them
            "DETECT_AUTO_MIN_AGREEMENT": "0.95",
            "DETECT_AUDIT_SAMPLE_FRACTION": "1",
            "DETECT_AUDIT_BUDGET": "1",
            "DETECT_AUDIT_WINDOW": str(steady),
            "DETECT_AUDIT_MIN_SAMPLES": str(steady),
            "DETECT_AUDIT_DEMOTE": "true",
            "DETECT_AUDIT_KEEP_DIR": str(keep),
            "DETECT_AUDIT_KEEP_MAX_FILES": "3",
        },
        module=DRIFT_SERVER,
    )
    budget = metric(server, "detect_audit_agreement_budget", **INT8)
    assert budget == 0.95  # the budget the build accepted INT8 with, from its manifest
    for i, name in enumerate(STEADY_PHOTOS * 2):
        assert detect(server, photo(name), "auto").headers["X-Precision"] == "int8"
        wait_for_samples(server, i + 1)
    healthy = metric(server, "detect_audit_agreement", **INT8)
    assert healthy is not None and healthy >= budget, healthy
    assert int8_entry(server)[0]["live"]["demoted"] is None

    answered_by: list[str] = []
    for name in STEADY_PHOTOS * 3:  # the engine now drifts; auto should leave it
        answered_by.append(detect(server, photo(name), "auto").headers["X-Precision"])
        if answered_by[-1] != "int8":
            break
        wait_for_samples(server, steady + len(answered_by))
    assert answered_by[-1] != "int8", f"auto kept choosing the drifting int8: {answered_by}"
    drifted = metric(server, "detect_audit_agreement", **INT8)
    assert drifted is not None and drifted < budget
    assert metric(server, "detect_audit_demoted", **INT8) == 1
    variant, auto = int8_entry(server)
    build = json.loads((int8_preferred / DEFAULT_MODEL / "manifest.json").read_text())
    built = next(v for v in build["variants"] if v["precision"] == "int8")["accuracy"]
    assert variant["agreement"] == built["map50_95_agreement"]  # the build's figure, beside
    assert variant["live"]["agreement"] == drifted  # the live one
    assert variant["live"]["demoted"].startswith(f"live agreement {drifted:.4f} < budget 0.95")
    assert auto != "int8"
    assert detect(server, photo("bus"), "int8").headers["X-Precision"] == "int8"  # still served

    # The disagreeing samples were kept, within bounds, as a folder `build --calib` accepts.
    kept = sorted((keep / DEFAULT_MODEL).glob("int8-*.png"))
    assert 1 <= len(kept) <= 3
    assert metric(server, "detect_audit_kept_total", **INT8) == len(kept)
    assert len(ImageSet.from_folder(keep / DEFAULT_MODEL)) == len(kept)

    assert_alert_fires(drifted, budget, tmp_path)


def assert_alert_fires(live: float, budget: float, tmp_path: Path) -> None:
    """The measured live agreement, held for 20 minutes, fires the alert (promtool)."""
    promtool = require_tool("promtool", "apt-get install prometheus (scripts/test.sh does)")
    rule = next(
        r
        for g in yaml.safe_load(ALERTS.read_text())["groups"]
        for r in g["rules"]
        if r["alert"] == "DetectLiveAgreementLow"
    )

    def render(template: str) -> str:
        out = template.replace("{{ $labels.model }}", DEFAULT_MODEL)
        out = out.replace("{{ $labels.precision }}", "int8")
        return out.replace('{{ $value | printf "%.3f" }}', f"{live:.3f}")

    labels = f'model="{DEFAULT_MODEL}",precision="int8"'
    case = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"detect_audit_agreement{{{labels}}}", "values": f"{live}x30"},
                    {
                        "series": f"detect_audit_agreement_budget{{{labels}}}",
                        "values": f"{budget}x30",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "20m",
                        "alertname": "DetectLiveAgreementLow",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    **rule["labels"],
                                    "model": DEFAULT_MODEL,
                                    "precision": "int8",
                                },
                                "exp_annotations": {
                                    k: render(v) for k, v in rule["annotations"].items()
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "live_alert_test.yml").write_text(yaml.safe_dump(case))
    done = subprocess.run(
        [promtool, "test", "rules", "live_alert_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_live_agreement_of_real_int8_matches_the_builders_measure_on_the_same_photos(
    server_factory: Callable[..., Server], built_engines: Path, default_model_source: Path
) -> None:
    """100% sampling on 50 requests at precision=int8: the live figure is the build's figure
    for those photos, computed offline the way the builder does (within 0.02)."""
    photos = list(SAMPLE_IMAGES)
    rounds = 5
    names = photos * rounds  # 10 real photos, 5 times each
    assert len(names) == 50
    server = server_factory(
        {
            "DETECT_ENGINES_DIR": str(built_engines),
            "DETECT_AUDIT_SAMPLE_FRACTION": "1",
            "DETECT_AUDIT_BUDGET": "1",
            "DETECT_AUDIT_WINDOW": "50",
            "DETECT_AUDIT_MIN_SAMPLES": "50",
        }
    )
    blobs = {n: sample_image(n).read_bytes() for n in SAMPLE_IMAGES}
    for i, name in enumerate(names):
        detect(server, blobs[name], "int8")
        wait_for_samples(server, i + 1)
    live = metric(server, "detect_audit_agreement", **INT8)
    assert live is not None

    folder = built_engines / DEFAULT_MODEL
    pipeline = load_model_pipeline(default_model_source, DEFAULT_MODEL)
    images = ImageSet(
        tuple(photos),
        tuple(decode_image(blobs[n], max_pixels=10**8) for n in photos),
        "audit-test",
        "the requests' photos",
    )
    found = {}
    for precision in (Precision.FP32, Precision.INT8):
        engine = OnnxRuntimeEngine(folder / f"{precision.value}.onnx", precision, max_batch=8)
        try:
            once = detect_all(engine, pipeline, images)
        finally:
            engine.close()
        found[precision] = once * rounds  # the 50 requests, in the order they were sent
    classes = pipeline.info.num_classes
    offline = agreement(found[Precision.FP32], found[Precision.INT8], classes).map50_95
    build = json.loads((folder / "manifest.json").read_text())
    int8 = next(v for v in build["variants"] if v["precision"] == "int8")
    print(
        f"live agreement {live:.4f}, builder's measure on the same 50 photos {offline:.4f}, "
        f"build-time (validation set) {int8['accuracy']['map50_95_agreement']:.4f}"
    )
    assert abs(live - offline) <= 0.02, (live, offline)
