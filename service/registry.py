"""The models this process serves: engines, schedulers, pipelines and precision policies.

Loading happens once, in the app's lifespan (engine loads and warm-ups run in a worker thread).
A model or variant that cannot load is recorded with its reason, shown by ``GET /models`` and by
readiness, instead of taking the whole process down.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from engines.errors import EngineError
from engines.model.info import ModelInfo, read_model_info
from engines.model.layouts import detect_layout
from engines.model.pipeline import ImagePipeline
from engines.precision import Precision
from engines.runtime.base import Engine
from service.config import Settings
from service.metrics import Metrics
from service.scheduler import BatchingConfig, BatchScheduler, DeviceLoad
from service.selection import PrecisionSelector, VariantStats
from service.variant_specs import VariantSpec, discover_variants

log = logging.getLogger(__name__)


class EngineFactory(Protocol):
    def __call__(self, spec: VariantSpec, settings: Settings) -> Engine: ...


def _onnxruntime_engine(spec: VariantSpec, settings: Settings) -> Engine:
    from engines.runtime.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(
        spec.artifact,
        spec.precision,
        providers=settings.ort_providers,
        intra_op_threads=settings.intra_op_threads,
        max_batch=settings.max_batch,
    )


def _tensorrt_engine(spec: VariantSpec, settings: Settings) -> Engine:
    from engines.runtime.tensorrt import TensorRTEngine  # lazy: needs CUDA + TensorRT

    return TensorRTEngine(spec.artifact, spec.precision, max_batch=settings.max_batch)


ENGINE_FACTORIES: dict[str, EngineFactory] = {
    "onnxruntime": _onnxruntime_engine,
    "tensorrt": _tensorrt_engine,
}


def engine_factory(settings: Settings, backend: str) -> EngineFactory:
    """The backend's own factory."""
    try:
        return ENGINE_FACTORIES[backend]
    except KeyError:
        raise EngineError(f"no engine backend named {backend!r}") from None


@dataclass
class ServedVariant:
    spec: VariantSpec
    engine: Engine
    scheduler: BatchScheduler
    ready: bool = False


@dataclass
class ServedModel:
    name: str
    info: ModelInfo
    pipeline: ImagePipeline
    selector: PrecisionSelector
    variants: dict[Precision, ServedVariant]
    unavailable: dict[str, str] = field(default_factory=dict)  # precision -> why not served


class _VariantObserver:
    """Routes the scheduler's knowledge to metrics and to the auto-precision policy."""

    def __init__(self, metrics: Metrics, model: str, precision: Precision) -> None:
        self._m = metrics
        self._labels = (model, precision.value)
        self._model = model
        self._precision = precision
        self.selector: PrecisionSelector | None = None

    def queued(self, depth: int) -> None:
        self._m.queue_depth.labels(*self._labels).set(depth)

    def batch_started(self, size: int, queue_waits_s: list[float]) -> None:
        self._m.batch_size.labels(*self._labels).observe(size)
        hist = self._m.queue_wait.labels(*self._labels)
        for wait in queue_waits_s:
            hist.observe(wait)
        if self.selector is not None:
            self.selector.observe_queue_wait(self._precision, max(queue_waits_s))

    def batch_finished(self, size: int, duration_s: float, ok: bool) -> None:
        self._m.inference_duration.labels(*self._labels).observe(duration_s)
        if ok:
            self._m.images.labels(*self._labels).inc(size)

    def rejected(self, reason: str) -> None:
        self._m.rejected.labels(self._model, reason).inc()


class ModelRegistry:
    """Loads, warms, serves and drains every configured model."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.models: dict[str, ServedModel] = {}
        # One process serves from one device; its batches, whatever the variant, take turns.
        self._device = DeviceLoad(settings.concurrent_batches)
        self.failed: dict[str, str] = {}  # model -> why it could not load
        self.loaded = False
        self.draining = False

    # -- loading (worker thread) ---------------------------------------------------------------

    def load(self) -> None:
        for name in self._settings.models:
            try:
                self.models[name] = self._load_model(name)
            except (EngineError, OSError, ValueError) as exc:
                self.failed[name] = str(exc)
                log.error("model %s not served: %s", name, exc)
        self.loaded = True

    def _load_model(self, name: str) -> ServedModel:
        s = self._settings
        source, specs, unavailable = discover_variants(
            s.models_dir, s.engines_dir, name, s.backend, tuple(s.ort_providers)
        )
        info = read_model_info(source, name)
        layout = detect_layout(info.outputs, info.num_classes, info.layout)
        pipeline = ImagePipeline(info, layout, max_pixels=s.max_pixels)
        variants: dict[Precision, ServedVariant] = {}
        for spec in specs:
            try:
                variants[spec.precision] = self._load_variant(name, spec)
            except EngineError as exc:
                unavailable[spec.precision.value] = f"failed to load: {exc}"
                log.error("%s/%s not served: %s", name, spec.precision, exc)
        if not variants:
            raise EngineError(f"no variant of {name} could be loaded: {unavailable}")
        selector = PrecisionSelector(
            [
                VariantStats(p, v.spec.per_image_latency_s, v.spec.agreement)
                for p, v in variants.items()
            ],
            auto_min_agreement=s.auto_min_agreement,
            queue_wait_slo_s=s.queue_wait_slo_ms / 1000,
        )
        for variant in variants.values():
            observer = variant.scheduler.observer
            if isinstance(observer, _VariantObserver):
                observer.selector = selector
        return ServedModel(name, info, pipeline, selector, variants, unavailable)

    def _load_variant(self, name: str, spec: VariantSpec) -> ServedVariant:
        s = self._settings
        engine = engine_factory(s, spec.backend)(spec, s)
        engine.warmup()
        observer = _VariantObserver(self._metrics, name, spec.precision)
        scheduler = BatchScheduler(
            engine.infer,
            BatchingConfig(
                max_batch=min(s.max_batch, engine.max_batch),
                max_wait_s=s.max_wait_ms / 1000,
                max_queue=s.max_queue,
                concurrency=s.concurrent_batches,
                expected_per_image_s=spec.per_image_latency_s,
            ),
            observer=observer,
            on_fatal=lambda exc: self._on_fatal(name, spec.precision, exc),
            name=f"{name}-{spec.precision.value}",
            device=self._device,
        )
        self._metrics.initialise_variant(name, spec.precision.value)
        self._metrics.queue_capacity.labels(name, spec.precision.value).set(s.max_queue)
        self._metrics.queue_depth.labels(name, spec.precision.value).set(0)
        self._metrics.engine_info.labels(
            name, spec.precision.value, engine.backend, engine.device
        ).set(1)
        log.info("loaded %s/%s on %s (%s)", name, spec.precision, engine.device, engine.backend)
        return ServedVariant(spec, engine, scheduler)

    def _on_fatal(self, model: str, precision: Precision, exc: BaseException) -> None:
        served = self.models.get(model)
        if served and precision in served.variants:
            served.variants[precision].ready = False
            served.unavailable[precision.value] = f"engine failed: {exc}"
        self._metrics.engine_ready.labels(model, precision.value).set(0)

    # -- serving (event loop) ------------------------------------------------------------------

    def start(self) -> None:
        for model in self.models.values():
            for precision, variant in model.variants.items():
                variant.scheduler.start()
                variant.ready = True
                self._metrics.engine_ready.labels(model.name, precision.value).set(1)

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when every configured model serves at least one healthy variant."""
        if not self.loaded:
            return False, ["models are still loading"]
        reasons = [f"{name}: {why}" for name, why in self.failed.items()]
        for model in self.models.values():
            if not any(v.ready for v in model.variants.values()):
                reasons.append(f"{model.name}: no healthy variant ({model.unavailable})")
            reasons.extend(
                f"{model.name}/{p.value}: {v.scheduler.dead_reason}"
                for p, v in model.variants.items()
                if v.scheduler.dead_reason
            )
        return not reasons, reasons

    async def close(self, timeout_s: float) -> None:
        """Drain every scheduler (finishing accepted work), then release the engines."""
        self.draining = True
        variants = [v for m in self.models.values() for v in m.variants.values()]
        await asyncio.gather(*(v.scheduler.close(timeout_s) for v in variants))
        for v in variants:
            v.engine.close()
