"""``detect-serve predict`` runs the server's pipeline in-process: same detections as /detect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import MODELS_DIR, REPO, Server

pytestmark = pytest.mark.slow


def test_predict_folder_matches_detect(
    tmp_path: Path, server: Server, photo: Callable[[str], bytes]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("bus", "zidane"):
        (photos / f"{name}.jpg").write_bytes(photo(name))
    (photos / "notes.txt").write_text("not an image, not picked up")
    env = {
        **os.environ,
        "DETECT_MODELS_DIR": str(MODELS_DIR),
        "DETECT_ENGINES_DIR": str(tmp_path / "engines"),
    }
    out, ann = tmp_path / "out.json", tmp_path / "ann"
    command = [
        "predict",
        str(photos),
        "--precision",
        "fp32",
        "--json",
        str(out),
        "--save",
        str(ann),
    ]
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "--log-level", "error", *command],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 image(s)" in run.stdout and "person" in run.stdout
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["precision"] == "fp32"
    with server.client() as client:
        for result in report["results"]:
            name = Path(result["image"]).name
            served = client.post(
                "/detect",
                params={"precision": "fp32"},
                files={"image": (name, (photos / name).read_bytes(), "image/jpeg")},
            ).json()
            assert result["detections"] == served["detections"]
            with Image.open(tmp_path / "ann" / name) as annotated:
                assert annotated.size == (result["width"], result["height"])


def test_predict_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "predict", str(tmp_path / "nope.jpg")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "does not exist" in run.stderr
