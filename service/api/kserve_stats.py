"""The KServe v2 / Triton statistics extension: ``GET /v2/models/stats`` and
``GET /v2/models/NAME[/versions/V]/stats``.

Statistics are kept per served variant (``NAME.fp32``, ``NAME.int8``...) whatever protocol the
requests came by. ``/v2/models/stats`` lists every variant; ``NAME.PRECISION/stats`` is that
variant; ``NAME/stats`` and ``NAME.detect/stats`` are the sum over the model's variants (what
ran for that name, as the variant is chosen per request).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.v2_models import resolve_v2
from service.deps import AuthDep, MetricsDep, RegistryDep
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.stats import VariantStats

router = APIRouter(prefix="/v2/models", tags=["kserve-v2"], dependencies=[AuthDep])


def statistics(
    registry: ModelRegistry, metrics: Metrics, name: str = "", version: str | None = None
) -> list[dict[str, Any]]:
    """The ``model_stats`` entries of one v2 model name, or of every variant (``name`` empty);
    shared by HTTP and gRPC (``ModelStatistics``)."""
    seen = metrics.inference_stats.snapshot()
    if not name:
        return [
            seen.get((model.name, precision.value), VariantStats()).as_dict(
                f"{model.name}.{precision.value}", str(model.version)
            )
            for model in registry.models.values()
            for precision in model.variants
        ]
    target = resolve_v2(registry, name, version)
    precisions = (
        [target.precision] if target.precision else [p.value for p in target.model.variants]
    )
    total = VariantStats()
    for precision in precisions:
        total.merge(seen.get((target.model.name, precision), VariantStats()))
    return [total.as_dict(name, str(target.model.version))]


@router.get("/stats", summary="v2 statistics of every model variant")
async def all_stats(registry: RegistryDep, metrics: MetricsDep) -> dict[str, Any]:
    return {"model_stats": statistics(registry, metrics)}


@router.get("/{model_name}/stats", summary="v2 statistics of one model")
@router.get("/{model_name}/versions/{version}/stats", include_in_schema=False)
async def model_stats(
    model_name: str, request: Request, registry: RegistryDep, metrics: MetricsDep
) -> dict[str, Any]:
    version = request.path_params.get("version")
    return {"model_stats": statistics(registry, metrics, model_name, version)}
