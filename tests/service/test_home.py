"""The project home: every command finds the same models, engines and caches from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.process import ServerProcess
from engines.sources.home import HomeSettings
from tests.conftest import DEFAULT_MODEL, REPO

HOME_VARS = ("DETECT_HOME", "DETECT_MODELS_DIR", "DETECT_ENGINES_DIR", "DETECT_CACHE_DIR")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in (*HOME_VARS, "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    return monkeypatch


def test_folders_default_under_the_home(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("HOME", str(tmp_path / "me"))
    home = tmp_path / "me" / ".local" / "share" / "detect-serve"
    assert HomeSettings().home == home
    clean_env.setenv("XDG_DATA_HOME", "relative/is/ignored")  # as the XDG spec says
    assert HomeSettings().home == home
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert HomeSettings().home == tmp_path / "xdg" / "detect-serve"
    clean_env.setenv("DETECT_HOME", str(tmp_path / "h"))
    clean_env.setenv("DETECT_ENGINES_DIR", "~/engines")
    paths = HomeSettings()
    assert (paths.models_dir, paths.cache_dir) == (tmp_path / "h/models", tmp_path / "h/cache")
    assert paths.engines_dir == tmp_path / "me" / "engines"  # each folder moves on its own


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.slow
def test_commands_work_from_any_directory(tmp_path: Path) -> None:
    """fetch, list and serve from an unrelated directory, on one home; nothing lands in cwd."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in HOME_VARS}
    env |= {
        "DETECT_HOME": str(tmp_path / "home"),
        "DETECT_CACHE_DIR": str(HomeSettings().cache_dir),  # reuse the downloads, not the models
        "PYTHONPATH": str(REPO),  # this checkout's code from any directory
    }
    listed = _cli("models", "list", cwd=elsewhere, env=env)
    assert json.loads(listed.stdout) == [
        {"name": name, "fetched": False, "built": False}
        for name in (DEFAULT_MODEL, "yolov8n-coco")  # the built-in catalogue, sorted
    ]
    fetched = _cli("models", "fetch", DEFAULT_MODEL, cwd=elsewhere, env=env)
    onnx = tmp_path / "home" / "models" / DEFAULT_MODEL / "source" / "model.onnx"
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.strip().splitlines()[-1] == str(onnx) and onnx.is_file()
    listed = _cli("models", "list", cwd=elsewhere, env=env)
    assert json.loads(listed.stdout)[0] == {"name": DEFAULT_MODEL, "fetched": True, "built": False}
    unknown = _cli("build", "no-such-model", cwd=elsewhere, env=env)
    assert (
        unknown.returncode == 2
        and "built-in models: yolov3-tiny-coco, yolov8n-coco" in unknown.stderr
    )
    server = ServerProcess.start(tmp_path / "server", env, cwd=elsewhere)
    try:
        assert httpx.get(server.url + "/health/ready", timeout=10).status_code == 200
    finally:
        server.stop()
    assert list(elsewhere.iterdir()) == []
