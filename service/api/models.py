"""``GET /models``: what is served, at which precisions, how accurate and how fast."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import AuthDep, RegistryDep, SettingsDep
from service.registry import ServedModel
from service.schemas import ModelEntry, ModelsResponse, VariantInfo

router = APIRouter(tags=["models"], dependencies=[AuthDep])


def model_entry(model: ServedModel) -> ModelEntry:
    return ModelEntry(
        name=model.name,
        input_size=list(model.info.input_size),
        layout=model.pipeline.layout.name,
        classes=list(model.info.class_names),
        auto_precision=model.selector.auto_choice.value,
        variants=[
            VariantInfo(
                precision=p.value,
                backend=v.engine.backend,
                device=v.engine.device,
                ready=v.ready,
                agreement=v.record.agreement,
                latency_ms=v.record.latency_ms,
                latency_measured_under=(
                    v.record.timings.measured_under if v.record.timings else None
                ),
                note=v.record.note,
            )
            for p, v in model.variants.items()
        ],
        unavailable={p.value: why for p, why in model.unavailable.items()},
    )


@router.get("/models", response_model=ModelsResponse, summary="List served models and variants")
async def list_models(registry: RegistryDep, settings: SettingsDep) -> ModelsResponse:
    return ModelsResponse(
        default_model=settings.default_model,
        models=[model_entry(m) for m in registry.models.values()],
        failed=registry.failed,
    )
