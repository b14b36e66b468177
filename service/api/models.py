"""``GET /models``: what is served, at which precisions, how accurate and how fast."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from engines.precision import Precision
from service.audit import PrecisionAudit
from service.deps import AuditDep, AuthDep, RegistryDep, SettingsDep
from service.registry import ServedModel, ServedVariant
from service.schemas import (
    LiveAgreementInfo,
    ModelBatching,
    ModelDefaults,
    ModelEntry,
    ModelsResponse,
    VariantInfo,
)

router = APIRouter(tags=["models"], dependencies=[AuthDep])


def _live(
    audit: PrecisionAudit, model: ServedModel, precision: Precision
) -> LiveAgreementInfo | None:
    live = audit.live(model.name, precision)
    if live is None:
        return None
    return LiveAgreementInfo(
        agreement=live.agreement, samples=live.samples, budget=live.budget, demoted=live.demoted
    )


def model_entry(model: ServedModel, audit: PrecisionAudit) -> ModelEntry:
    return ModelEntry(
        name=model.name,
        input_size=list(model.info.input_size),
        layout=model.pipeline.layout.name,
        classes=list(model.info.class_names),
        auto_precision=model.selector.auto_choice.value,
        auto_under_pressure=model.selector.under_pressure,
        variants=[variant_info(v, _live(audit, model, p)) for p, v in model.variants.items()],
        unavailable={p.value: why for p, why in model.unavailable.items()},
        defaults=ModelDefaults(**asdict(model.config.defaults)) if model.config else None,
        batching=ModelBatching(**asdict(model.config.batching)) if model.config else None,
    )


def variant_info(v: ServedVariant, live_agreement: LiveAgreementInfo | None) -> VariantInfo:
    speed = v.speed.figures()
    return VariantInfo(
        precision=v.record.precision.value,
        backend=v.engine.backend,
        device=v.engine.device,
        ready=v.ready,
        agreement=v.record.agreement,
        latency_ms=v.record.latency_ms,
        latency_measured_under=v.record.timings.measured_under if v.record.timings else None,
        live_latency_ms={b: round(f.ms, 2) for b, f in speed.items()},
        live_samples={b: f.samples for b, f in speed.items()},
        live_measured_under={b: f.source for b, f in speed.items()},
        note=v.record.note,
        live=live_agreement,
    )


@router.get("/models", response_model=ModelsResponse, summary="List served models and variants")
async def list_models(
    registry: RegistryDep, settings: SettingsDep, audit: AuditDep
) -> ModelsResponse:
    return ModelsResponse(
        default_model=settings.default_model,
        models=[model_entry(m, audit) for m in registry.models.values()],
        failed=registry.failed,
    )
