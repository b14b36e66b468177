"""The live precision audit: sample reduced-precision answers, re-run them in FP32, keep score.

Two hooks tie it to the rest of the service, each one call: the request path calls
``offer(...)`` after post-processing an image, and each model's ``PrecisionSelector`` consults
``demoted(model, precision)`` (set by ``attach``) before ``auto`` picks a variant.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from engines.build.accuracy import CANDIDATE_OPTIONS
from engines.model.pipeline import PreparedImage
from engines.precision import Precision
from service.audit.budget import DeviceBudget
from service.audit.keep import SampleStore
from service.audit.shadow import Dropped, ShadowQueue
from service.audit.window import RollingAgreement, image_agreement
from service.config import Settings
from service.metrics import Metrics
from service.registry import ModelRegistry, ServedModel, ServedVariant

log = logging.getLogger(__name__)
Outputs = Mapping[str, np.ndarray]
DROP_REASONS = ("budget", "backlog", "busy", "unavailable", "error")


@dataclass
class _Target:
    """One audited (model, reduced precision) and its FP32 reference."""

    model: ServedModel
    precision: Precision
    reference: ServedVariant
    budget: float
    window: RollingAgreement
    demoted: str | None = None


@dataclass(frozen=True)
class _Sample:
    target: _Target
    image: PreparedImage
    outputs: Outputs  # the variant's raw outputs for this image (leading dim 1)


@dataclass(frozen=True)
class LiveAgreement:
    """What ``GET /models`` shows beside the build-time figure."""

    agreement: float | None
    samples: int
    budget: float
    demoted: str | None


class PrecisionAudit:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        seed: int | None = None,
        max_pending: int = 8,
        max_wait_s: float = 2.0,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._rng = random.Random(seed)
        self._budget = DeviceBudget(settings.audit_budget)
        self._targets: dict[tuple[str, Precision], _Target] = {}
        self._store = (
            SampleStore(
                settings.audit_keep_dir,
                settings.audit_keep_max_files,
                settings.audit_keep_max_bytes,
            )
            if settings.audit_keep_dir is not None
            else None
        )
        # One thread: shadow work is serial by design, and never competes with itself.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self._started = False
        self._shadow: ShadowQueue[_Sample, Outputs] = ShadowQueue(
            self._infer, self._finish, self._drop, max_pending=max_pending, max_wait_s=max_wait_s
        )

    # -- wiring (event loop, after the registry started) -----------------------------------------

    def attach(self, registry: ModelRegistry) -> None:
        """Audit every served reduced-precision variant that has an FP32 sibling."""
        for model in registry.models.values():
            self.attach_model(model)

    def attach_model(self, model: ServedModel) -> None:
        """Audit ``model`` (a new version replaces the targets of the one before)."""
        s = self._settings
        self.detach(model.name)
        model.selector.demoted = functools.partial(self.demoted, model.name)
        reference = model.variants.get(Precision.FP32)
        if reference is None or s.audit_sample_fraction <= 0:
            return
        for precision, variant in model.variants.items():
            if precision is Precision.FP32:
                continue
            window = RollingAgreement(s.audit_window, s.audit_min_samples, model.info.num_classes)
            # The budget the build accepted it with (strict 1.0 if it recorded none).
            accuracy = variant.record.accuracy
            budget = accuracy.budget if accuracy is not None else 1.0
            self._targets[(model.name, precision)] = _Target(
                model, precision, reference, budget, window
            )
            self._initialise_metrics(model.name, precision.value, budget)
            log.info(
                "auditing %s/%s against fp32 on %.2f%% of its requests",
                model.name,
                precision.value,
                s.audit_sample_fraction * 100,
            )
        if self._targets and not self._started:
            self._started = True
            self._shadow.start()

    def detach(self, model: str) -> None:
        """Stop auditing ``model`` (unloaded, or replaced by a new version)."""
        for key in [k for k in self._targets if k[0] == model]:
            del self._targets[key]

    async def after_shadow(self, work: Callable[[], None]) -> None:
        """Run ``work`` after the shadow run in progress, if any (closing engines it may use)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _initialise_metrics(self, model: str, precision: str, budget: float) -> None:
        m = self._metrics
        m.audit_agreement_budget.labels(model, precision).set(budget)
        m.audit_window_samples.labels(model, precision).set(0)
        m.audit_samples.labels(model, precision)
        m.audit_demoted.labels(model, precision).set(0)
        m.audit_kept.labels(model, precision)
        for reason in DROP_REASONS:
            m.audit_dropped.labels(model, precision, reason)

    async def close(self) -> None:
        await self._shadow.close()
        self._executor.shutdown(wait=True)

    # -- the two hooks ---------------------------------------------------------------------------

    def offer(
        self, model: ServedModel, variant: ServedVariant, image: PreparedImage, outputs: Outputs
    ) -> None:
        """One answered image; maybe queue its FP32 re-run. Never waits, never raises."""
        target = self._targets.get((model.name, variant.record.precision))
        if target is not None and target.model is not model:
            return  # answered by a version being retired: its FP32 reference is not this one's
        if target is None or self._rng.random() >= self._settings.audit_sample_fraction:
            return
        sample = _Sample(target, image, outputs)
        if not self._budget.allows():
            self._drop(sample, "budget")
        elif not self._shadow.put(sample, target.reference.scheduler.device):
            self._drop(sample, "backlog")

    def demoted(self, model: str, precision: Precision) -> str | None:
        """Why ``auto`` should not choose this variant now; None when it may."""
        target = self._targets.get((model, precision))
        return target.demoted if target is not None else None

    def live(self, model: str, precision: Precision) -> LiveAgreement | None:
        target = self._targets.get((model, precision))
        if target is None:
            return None
        w = target.window
        return LiveAgreement(w.value, w.samples, target.budget, target.demoted)

    # -- shadow work -----------------------------------------------------------------------------

    def _drop(self, sample: _Sample, reason: str) -> None:
        t = sample.target
        self._metrics.audit_dropped.labels(t.model.name, t.precision.value, reason).inc()

    async def _infer(self, sample: _Sample) -> Outputs:
        """FP32 on the same input tensor the variant ran (device slot held by the caller)."""
        reference = sample.target.reference
        if not reference.ready:
            raise Dropped("unavailable")
        if not self._budget.allows():  # queued samples were admitted before earlier ones ran
            raise Dropped("budget")
        started = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, reference.engine.infer, sample.image.tensor[None]
            )
        finally:
            self._budget.charge(time.monotonic() - started)

    async def _finish(self, sample: _Sample, reference: Outputs) -> None:
        started = time.monotonic()
        kept = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._judge, sample, reference
        )
        self._budget.charge(time.monotonic() - started)  # judging is CPU the host pays too
        t = sample.target
        labels = (t.model.name, t.precision.value)
        m = self._metrics
        m.audit_samples.labels(*labels).inc()
        m.audit_window_samples.labels(*labels).set(t.window.samples)
        if kept:
            m.audit_kept.labels(*labels).inc()
        value = t.window.value
        if value is None:
            return
        m.audit_agreement.labels(*labels).set(value)
        if self._settings.audit_demote:
            self._update_demotion(t, value)
        m.audit_demoted.labels(*labels).set(1 if t.demoted else 0)

    def _judge(self, sample: _Sample, reference_outputs: Outputs) -> bool:
        """Worker thread: decode both answers as the builder does, score, maybe keep."""
        t = sample.target
        pipeline = t.model.pipeline
        reference = pipeline.finish(reference_outputs, sample.image, CANDIDATE_OPTIONS)
        candidate = pipeline.finish(sample.outputs, sample.image, CANDIDATE_OPTIONS)
        t.window.add(reference, candidate)
        if self._store is None:
            return False
        score = image_agreement(reference, candidate, t.model.info.num_classes)
        if score is None or score >= t.budget:
            return False
        return self._store.keep(t.model.name, t.precision.value, sample.image.tensor)

    def _update_demotion(self, t: _Target, value: float) -> None:
        if value < t.budget and t.demoted is None:
            t.demoted = (
                f"live agreement {value:.4f} < budget {t.budget} over the last "
                f"{t.window.samples} shadow samples"
            )
            log.warning("%s/%s demoted: %s", t.model.name, t.precision.value, t.demoted)
        elif value >= t.budget and t.demoted is not None:
            log.warning(
                "%s/%s recovered: live agreement %.4f", t.model.name, t.precision.value, value
            )
            t.demoted = None
