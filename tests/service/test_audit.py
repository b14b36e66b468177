"""The live precision audit's parts, in process: budget, rolling agreement, sample store, the
selector's demotion predicate, and shadow runs against a saturated scheduler.

The model is the real default one (its real outputs on a real photo); only the engines are
stand-ins, so a test can hold a batch on the device as long as it needs to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engines.artifacts.record import Timings, VariantRecord
from engines.build.int8.calibration import ImageSet
from engines.model.pipeline import ModelPipeline, PreparedImage, load_model_pipeline
from engines.model.postprocess import Detections
from engines.precision import Precision
from engines.runtime.onnxruntime import OnnxRuntimeEngine
from engines.sources.sample_images import sample_image
from service.audit import PrecisionAudit
from service.audit.budget import DeviceBudget
from service.audit.keep import SampleStore
from service.audit.window import RollingAgreement
from service.config import Settings
from service.metrics import Metrics
from service.registry import ModelRegistry, ServedModel, ServedVariant
from service.scheduler import BatchingConfig, BatchScheduler, DeviceLoad, Outputs
from service.selection import PrecisionSelector
from tests.conftest import DEFAULT_MODEL
from tests.engines.build_fixtures import accuracy

MODEL = "m"


class RecordedEngine:
    """Answers every row with one recorded real output; ``gate`` holds batches (saturation)."""

    max_batch = 1
    backend = "stand-in"
    device = "cpu"

    def __init__(self, outputs: Outputs, on_infer: Callable[[], None] | None = None) -> None:
        self._outputs = outputs
        self._on_infer = on_infer
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def infer(self, batch: np.ndarray) -> Outputs:
        assert self.gate.wait(30), "test never opened the gate"
        self.calls += 1
        if self._on_infer is not None:
            self._on_infer()
        return {k: np.repeat(v, len(batch), axis=0) for k, v in self._outputs.items()}

    def warmup(self) -> None: ...
    def close(self) -> None: ...


@pytest.fixture(scope="module")
def bus(default_model_source: Path) -> tuple[ModelPipeline, PreparedImage, Outputs]:
    """The default model's pipeline, bus.jpg prepared for it, and FP32's real outputs on it."""
    pipeline = load_model_pipeline(default_model_source, DEFAULT_MODEL)
    image = pipeline.prepare(sample_image("bus").read_bytes())
    engine = OnnxRuntimeEngine(default_model_source, Precision.FP32, max_batch=1)
    try:
        outputs = engine.infer(image.tensor[None])
    finally:
        engine.close()
    return pipeline, image, outputs


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- parts -----------------------------------------------------------------------------------


def test_budget_admits_its_rate_of_device_time() -> None:
    now = [0.0]
    budget = DeviceBudget(0.05, clock=lambda: now[0])  # 5% of the device, 0.5 s burst
    assert budget.allows()
    budget.charge(0.6)  # one run over the burst: in debt
    assert not budget.allows()
    now[0] += 1.0  # 0.05 s back: still in debt
    assert not budget.allows()
    now[0] += 2.0
    assert budget.allows()
    now[0] += 1000.0  # refills only up to the burst
    budget.charge(0.5)
    assert not budget.allows()


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(classes, np.int64),
    )


def test_rolling_agreement_is_the_builders_measure_over_the_window() -> None:
    person = _dets([[10, 10, 110, 210]], [0.9], [0])
    window = RollingAgreement(window=3, min_samples=2, num_classes=80)
    assert window.add(person, person) is None  # one sample says nothing yet
    assert window.add(person, person) == 1.0
    moved = _dets([[60, 60, 160, 260]], [0.9], [0])  # IoU ~0.3 with the original: lost
    for _ in range(3):  # the window forgets the agreeing samples
        window.add(person, moved)
    assert window.value == 0.0 and window.samples == 3
    empty = _dets([], [], [])
    window.add(empty, empty)  # FP32 saw nothing: no evidence either way
    assert window.value == 0.0


def test_sample_store_is_bounded_and_is_what_build_calib_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = SampleStore(tmp_path / "keep", max_files=3, max_bytes=10**7)
    tensors = [rng.random((3, 64, 64), dtype=np.float32) for _ in range(5)]
    kept = [store.keep(MODEL, "int8", t) for t in tensors]
    assert kept == [True, True, True, False, False]
    assert not store.keep("../escape", "int8", tensors[0])
    folder = tmp_path / "keep" / MODEL
    images = ImageSet.from_folder(folder)  # exactly what `detect-serve build --calib` loads
    assert len(images) == 3 and images.images[0].shape == (64, 64, 3)
    # A restart counts what is already there; a byte bound smaller than one more PNG refuses.
    again = SampleStore(
        tmp_path / "keep", max_files=10, max_bytes=sum(p.stat().st_size for p in folder.iterdir())
    )
    assert not again.keep(MODEL, "int8", tensors[4])


def record(precision: Precision, per_image_s: float | None, agreement: float) -> VariantRecord:
    """An accepted variant as the build records it."""
    return VariantRecord(
        precision=precision,
        backend="onnxruntime",
        device="cpu",
        status="accepted",
        accuracy=accuracy(agreement, budget=0.95),
        timings=Timings(latency_ms={1: 1000 * per_image_s}) if per_image_s else None,
    )


def test_auto_avoids_a_demoted_variant_and_returns_when_it_recovers() -> None:
    selector = PrecisionSelector(
        [
            record(Precision.FP32, 0.10, 1.0),
            record(Precision.FP16, 0.08, 1.0),
            record(Precision.INT8, 0.05, 0.98),
        ],
        auto_min_agreement=0.95,
        queue_wait_slo_s=1.0,
        saturation_batch=8,
    )
    assert selector.select("auto") is Precision.INT8
    demoted: dict[Precision, str] = {Precision.INT8: "live agreement 0.5 < budget 0.95"}
    selector.demoted = demoted.get
    assert selector.select("auto") is Precision.FP16  # the fastest proven one left
    assert selector.select("int8") is Precision.INT8  # explicit requests are still served
    demoted[Precision.FP16] = "drifted too"
    assert selector.select("auto") is Precision.FP32
    demoted.clear()
    assert selector.select("auto") is Precision.INT8


# -- shadow runs against a saturated scheduler ----------------------------------------------


def _served(
    pipeline: ModelPipeline, engines: dict[Precision, RecordedEngine], device: DeviceLoad
) -> ServedModel:
    variants = {
        p: ServedVariant(
            record(p, None, 1.0),
            e,  # type: ignore[arg-type]
            BatchScheduler(
                e.infer,
                BatchingConfig(max_batch=1, max_wait_s=0.004, max_queue=64, concurrency=1),
                device=device,
                name=p.value,
            ),
            ready=True,
        )
        for p, e in engines.items()
    }
    selector = PrecisionSelector(
        [v.record for v in variants.values()],
        auto_min_agreement=0.9,
        queue_wait_slo_s=1,
        saturation_batch=8,
    )
    return ServedModel(MODEL, pipeline, selector, variants)


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < give_up, f"never happened: {what}"
        await asyncio.sleep(0.01)


def test_shadow_runs_wait_for_an_idle_device_and_are_dropped_under_load(
    bus: tuple[ModelPipeline, PreparedImage, Outputs], tmp_path: Path
) -> None:
    pipeline, image, outputs = bus
    int8 = RecordedEngine(outputs)
    fp32_ran_while_busy: list[int] = []
    fp32 = RecordedEngine(outputs, on_infer=lambda: fp32_ran_while_busy.append(int8_busy()))
    device = DeviceLoad(1)
    model = _served(pipeline, {Precision.FP32: fp32, Precision.INT8: int8}, device)
    int8_variant = model.variants[Precision.INT8]

    def int8_busy() -> int:
        return int(int8_variant.scheduler.busy)

    settings = Settings(
        engines_dir=tmp_path,
        audit_sample_fraction=1.0,
        audit_budget=1.0,
        audit_window=4,
        audit_min_samples=1,
    )
    metrics = Metrics()
    labels = {"model": MODEL, "precision": "int8"}

    async def main() -> None:
        registry = ModelRegistry(settings, metrics)
        registry.models[MODEL] = model
        for v in model.variants.values():
            v.scheduler.start()
        audit = PrecisionAudit(settings, metrics, max_pending=2, max_wait_s=0.3)
        audit.attach(registry)
        far = time.monotonic() + 60
        # Saturate: one int8 batch held on the device, nine more queued behind it.
        int8.gate.clear()
        foreground = [
            asyncio.create_task(int8_variant.scheduler.submit(image.tensor, far)) for _ in range(10)
        ]
        await _until(lambda: int8_variant.scheduler.queue_depth == 9, "int8 queue filled")
        for _ in range(6):
            audit.offer(model, int8_variant, image, outputs)

        def dropped(reason: str) -> float:
            return counter(metrics, "detect_audit_dropped_total", **labels, reason=reason)

        # Two wait their turn and give up (busy); four never fit the backlog.
        await _until(lambda: dropped("busy") == 2, "busy drops counted")
        assert dropped("backlog") == 4
        assert fp32.calls == 0  # no shadow run while foreground work waited
        assert int8_variant.scheduler.queue_depth == 9  # and the queue is as it was
        int8.gate.set()
        results = await asyncio.gather(*foreground)
        assert len(results) == 10 and int8.calls == 10
        assert all(r.outputs["output0"].shape == outputs["output0"].shape for r in results)
        # Idle again: the next sample runs, and agrees perfectly (same outputs on both sides).
        audit.offer(model, int8_variant, image, outputs)
        await _until(
            lambda: counter(metrics, "detect_audit_samples_total", **labels) == 1, "a shadow run"
        )
        assert fp32.calls == 1 and fp32_ran_while_busy == [0]
        assert metrics.registry.get_sample_value("detect_audit_agreement", labels) == 1.0
        assert dropped("budget") == 0 and dropped("error") == 0
        await audit.close()
        for v in model.variants.values():
            await v.scheduler.close()

    asyncio.run(main())


def test_settings_refuse_a_window_smaller_than_its_minimum() -> None:
    with pytest.raises(ValueError, match="audit_min_samples"):
        Settings(audit_window=10, audit_min_samples=20)
    assert Settings().audit_sample_fraction == 0.01 and not Settings().audit_demote
    assert Settings().audit_keep_dir is None  # keeping users' images is opt-in
