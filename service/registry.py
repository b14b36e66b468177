"""The models this process serves: engines, schedulers, pipelines and precision policies.

Loading happens once, in the app's lifespan (engine loads and warm-ups run in a worker thread).
A model or variant that cannot load is recorded with its reason, shown by ``GET /models`` and by
readiness, instead of taking the whole process down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
from service import leases, speed
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
        session_config=dict(settings.ort_session_config),
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
    # Each (re)load is a new version; requests hold the one they started on (service.leases).
    version: int = 1
    holds: leases.Holds = field(default_factory=leases.Holds)

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
        self.unloaded: set[str] = set()  # taken out of service by model control
        self.loaded = False
        self.draining = False
        # Guards the lookup-and-hold of a request against the swap of a reload.
        self._lock = threading.Lock()

    def get(self, name: str) -> ServedModel | None:
        """The served version of ``name``, held by the current request until it ends."""
        with self._lock:
            served = self.models.get(name)
            if served is not None:
                leases.hold(served.holds)
        return served

    def swap(self, name: str, new: ServedModel | None) -> ServedModel | None:
        """Serve ``new`` (None: nothing) under ``name``; the old version, retired, is returned
        (no request finds it from now on; those that hold it keep it)."""
        with self._lock:
            old = self.models.pop(name, None)
            if new is not None:
                self.models[name] = new
                self.unloaded.discard(name)
            else:
                self.unloaded.add(name)
            self.failed.pop(name, None)
        if old is not None:
            old.holds.retire()
        return old

    # -- loading (worker thread) ---------------------------------------------------------------

    def load(self) -> None:
        for name in self._settings.models:
            try:
                self.models[name] = self.load_version(name, 1)
            except (EngineError, OSError, ValueError) as exc:
                self.failed[name] = str(exc)
                log.error("model %s not served: %s", name, exc)
        self.loaded = True

    def load_version(self, name: str, version: int) -> ServedModel:
        """Load and warm ``name`` as ``version`` (worker thread); not served until swapped in."""
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
        return ServedModel(name, pipeline, selector, variants, unavailable, serving, version)

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
        # The variant this scheduler serves: a fatal error takes out this one, not whichever
        # version of the model is served when it happens.
        cell: list[ServedVariant] = []
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
            on_fatal=lambda exc: self._on_fatal(name, cell, exc),
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
        cell.append(ServedVariant(record, engine, scheduler, speed=live))
        return cell[0]

    def _on_fatal(self, model: str, cell: list[ServedVariant], exc: BaseException) -> None:
        variant = cell[0]
        variant.ready = False
        precision = variant.record.precision
        served = self.models.get(model)
        if served and served.variants.get(precision) is variant:
            served.unavailable[precision] = f"engine failed: {exc}"
            self._metrics.engine_ready.labels(model, precision.value).set(0)

    # -- serving (event loop) ------------------------------------------------------------------

    def start(self) -> None:
        for model in self.models.values():
            self.start_model(model)

    def start_model(self, model: ServedModel) -> None:
        for precision, variant in model.variants.items():
            variant.scheduler.start()
            variant.ready = True
            self._metrics.engine_ready.labels(model.name, precision.value).set(1)

    async def retire(self, old: ServedModel, timeout_s: float) -> None:
        """Drain a version ``swap`` took out: wait until no request holds it (bounded), then
        close its batchers (finishing anything queued); its engines are closed by the caller."""
        if not await old.holds.wait_idle(timeout_s):
            log.warning(
                "%s version %d: %d requests still running after %.0f s; closing its batchers",
                old.name,
                old.version,
                old.holds.count,
                timeout_s,
            )
        await asyncio.gather(*(v.scheduler.close(timeout_s) for v in old.variants.values()))
        current = self.models.get(old.name)
        for precision, variant in old.variants.items():
            variant.ready = False
            now = current.variants.get(precision) if current is not None else None
            if now is None:
                # Nothing serves this (model, precision) now: its series must not say ready.
                self._metrics.engine_ready.labels(old.name, precision.value).set(0)
            engine = variant.engine
            if now is None or (now.engine.backend, now.engine.device) != (
                engine.backend,
                engine.device,
            ):
                info = (old.name, precision.value, engine.backend, engine.device)
                self._metrics.engine_info.labels(*info).set(0)

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when every configured model serves at least one healthy variant."""
        if not self.loaded:
            return False, ["models are still loading"]
        reasons = [f"{name}: {why}" for name, why in self.failed.items()]
        if not self.models and not self.failed:
            reasons.append("no model is served (all unloaded)")
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
