"""How many batches the device runs at once when `DETECT_CONCURRENT_BATCHES` is left at 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import CPU_BATCHES_IN_FLIGHT, Settings


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DETECT_CONCURRENT_BATCHES", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout


def test_cpu_runs_several_small_batches_side_by_side() -> None:
    assert Settings().batches_in_flight() == CPU_BATCHES_IN_FLIGHT > 1


@pytest.mark.parametrize(
    "gpu",
    [
        {"backend": "tensorrt"},
        {"ort_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
    ],
)
def test_a_gpu_runs_one_batch_at_a_time(gpu: dict[str, object]) -> None:
    assert Settings(**gpu).batches_in_flight() == 1  # type: ignore[arg-type]


def test_an_explicit_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECT_CONCURRENT_BATCHES", "3")
    assert Settings(backend="tensorrt").batches_in_flight() == 3
    assert Settings().batches_in_flight() == 3
