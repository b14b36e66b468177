"""The models this process serves: engines, schedulers, pipelines and precision policies.

Loading happens once, in the app's lifespan (engine loads and warm-ups run in a worker thread).
A model or variant that cannot load is recorded with its reason, shown by ``GET /models`` and by
readiness, instead of taking the whole process down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from engines.artifacts.record import VariantRecord
from engines.artifacts.variants import ServableVariant, discover_variants
from engines.errors import EngineError
from engines.model.info import ModelInfo
from engines.model.pipeline import ModelPipeline, load_model_pipeline
from engines.precision import Precision
from engines.runtime.backends import open_engine
from engines.runtime.base import Engine, EngineOptions
from engines.sources.repository import model_fallback
from service import speed
from service.config import Settings
from service.metrics import Metrics
from service.model_serving import ModelServing, model_serving
from service.scheduler import BatchingConfig, BatchScheduler, DeviceLoad
from service.selection import PrecisionSelector
from service.speed import LiveSpeed

log = logging.getLogger(__name__)

# Opens a servable variant as an engine: by default through the backend table.
EngineFactory = Callable[[ServableVariant, EngineOptions], Engine]


def open_variant(variant: ServableVariant, options: EngineOptions) -> Engine:
    return open_engine(variant.path, variant.record.precision, variant.record.backend, options)


def engine_factory() -> EngineFactory:
    """How this process opens engines: through the backend table. (The fault-injecting test
    server wraps this function; production code has no hook.)"""
    return open_variant


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        max_batch=settings.max_batch,
        providers=tuple(settings.ort_providers),
        intra_op_threads=settings.intra_op_threads,
    )


@dataclass
class ServedVariant:
    """A loaded variant: its record (what the build proved), its engine and its batcher."""

    record: VariantRecord
    engine: Engine
    scheduler: BatchScheduler
    ready: bool = False
    # Engine time per batch size on this host, kept current by every batch (what `auto` ranks).
    speed: LiveSpeed = field(default_factory=LiveSpeed)


@dataclass
class ServedModel:
    name: str
    pipeline: ModelPipeline
    selector: PrecisionSelector
    variants: dict[Precision, ServedVariant]
    unavailable: dict[Precision, str] = field(default_factory=dict)  # why a precision is not served
    config: ModelServing | None = None  # effective per-model defaults and batching

    @property
    def info(self) -> ModelInfo:
        return self.pipeline.info


class _VariantObserver:
    """Routes the scheduler's knowledge to metrics and to the auto-precision policy."""

    def __init__(self, metrics: Metrics, model: str, precision: Precision, live: LiveSpeed) -> None:
        self._m = metrics
        self._live = live
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
            self._live.observe(size, duration_s)

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
        found = discover_variants(
            s.models_dir, s.engines_dir, name, s.backend, tuple(s.ort_providers)
        )
        pipeline = load_model_pipeline(
            found.source,
            name,
            max_pixels=s.max_pixels,
            fallback=model_fallback(s.models_dir / name),
        )
        serving = model_serving(s, name, pipeline.info)
        unavailable = dict(found.refused)
        variants: dict[Precision, ServedVariant] = {}
        for servable in found.servable:
            precision = servable.record.precision
            try:
                variants[precision] = self._load_variant(name, servable, pipeline.info, serving)
            except EngineError as exc:
                unavailable[precision] = f"failed to load: {exc}"
                log.error("%s/%s not served: %s", name, precision, exc)
        if not variants:
            reasons = {p.value: why for p, why in unavailable.items()}
            raise EngineError(f"no variant of {name} could be loaded: {reasons}")
        selector = PrecisionSelector(
            [v.record for v in variants.values()],
            auto_min_agreement=s.auto_min_agreement,
            queue_wait_slo_s=s.queue_wait_slo_ms / 1000,
            speeds={p: v.speed for p, v in variants.items()},
            saturation_batch=s.max_batch,
        )
        for variant in variants.values():
            observer = variant.scheduler.observer
            if isinstance(observer, _VariantObserver):
                observer.selector = selector
        return ServedModel(name, pipeline, selector, variants, unavailable, serving)

    def _load_variant(
        self, name: str, servable: ServableVariant, info: ModelInfo, serving: ModelServing
    ) -> ServedVariant:
        s = self._settings
        record = servable.record
        precision = record.precision
        options = replace(
            engine_options(s), max_batch=serving.batching.max_batch, input_size=info.input_size
        )
        engine = engine_factory()(servable, options)
        engine.warmup()
        live = speed.first_guess(record)
        if s.warmup_timing_runs:
            # The manifest's figures may come from another host or a busy moment: time this one.
            sizes = (1, min(s.max_batch, engine.max_batch))
            timed = speed.measure_engine(engine, sizes, s.warmup_timing_runs, info.input_size)
            live.replace(timed)
        observer = _VariantObserver(self._metrics, name, precision, live)
        scheduler = BatchScheduler(
            engine.infer,
            BatchingConfig(
                max_batch=min(serving.batching.max_batch, engine.max_batch),
                max_wait_s=serving.batching.max_wait_ms / 1000,
                max_queue=s.max_queue,
                concurrency=s.concurrent_batches,
                # This host's warm-up figure when there is one, not the build machine's.
                expected_per_image_s=live.per_image_s(s.max_batch),
            ),
            observer=observer,
            on_fatal=lambda exc: self._on_fatal(name, precision, exc),
            name=f"{name}-{precision.value}",
            device=self._device,
        )
        self._metrics.initialise_variant(name, precision.value)
        self._metrics.queue_capacity.labels(name, precision.value).set(s.max_queue)
        self._metrics.queue_depth.labels(name, precision.value).set(0)
        self._metrics.engine_info.labels(name, precision.value, engine.backend, engine.device).set(
            1
        )
        log.info("loaded %s/%s on %s (%s)", name, precision, engine.device, engine.backend)
        return ServedVariant(record, engine, scheduler, speed=live)

    def _on_fatal(self, model: str, precision: Precision, exc: BaseException) -> None:
        served = self.models.get(model)
        if served and precision in served.variants:
            served.variants[precision].ready = False
            served.unavailable[precision] = f"engine failed: {exc}"
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
                why = {p.value: reason for p, reason in model.unavailable.items()}
                reasons.append(f"{model.name}: no healthy variant ({why})")
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
