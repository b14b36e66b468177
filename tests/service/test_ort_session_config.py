"""`DETECT_ORT_SESSION_CONFIG` reaches the ONNX Runtime session of every served engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.precision import Precision
from engines.runtime.backends import open_engine
from service.config import Settings
from service.registry import engine_options
from tests.conftest import DEFAULT_MODEL_DIR


def test_session_config_entries_reach_the_served_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, default_model_source: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    monkeypatch.setenv("DETECT_ORT_SESSION_CONFIG", '{"session.intra_op.allow_spinning": "0"}')
    options = engine_options(Settings())
    engine = open_engine(
        DEFAULT_MODEL_DIR / "source" / "model.onnx", Precision.FP32, "onnxruntime", options
    )
    try:
        session = engine._session  # type: ignore[attr-defined]
        read = session.get_session_options().get_session_config_entry
        assert read("session.intra_op.allow_spinning") == "0"
    finally:
        engine.close()
