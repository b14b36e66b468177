"""FastAPI dependencies as type aliases: settings, registry, metrics, API keys, model lookup."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.types import Scope

from service.audit import PrecisionAudit
from service.config import Settings
from service.errors import ModelNotFound, Unauthorized
from service.metrics import Metrics
from service.registry import ModelRegistry, ServedModel


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_audit(request: Request) -> PrecisionAudit:
    audit: PrecisionAudit = request.app.state.audit
    return audit


SettingsDep = Annotated[Settings, Depends(get_settings)]
AuditDep = Annotated[PrecisionAudit, Depends(get_audit)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return request.headers.get("x-api-key")


def key_is_valid(presented: str | None, keys: list[str]) -> bool:
    """Whether ``presented`` is one of ``keys`` (always, when no keys are set)."""
    if not keys:
        return True
    if presented is None:
        return False
    given = presented.encode()
    # Compare against all keys without short-circuit so timing does not reveal which matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


def scope_is_authorized(scope: Scope, keys: list[str]) -> bool:
    """``key_is_valid`` for a raw ASGI scope (middleware runs before any ``Request``)."""
    return not keys or key_is_valid(_presented_key(Request(scope)), keys)


def check_api_key(request: Request, settings: SettingsDep) -> None:
    """Enforce ``DETECT_API_KEYS`` when set; constant-time comparison against every key."""
    if not key_is_valid(_presented_key(request), settings.api_keys):
        raise Unauthorized()


def check_api_key_for_ops(request: Request, settings: SettingsDep) -> None:
    """Health and metrics are open unless ``protect_health``/``protect_metrics`` say otherwise."""
    path = request.url.path
    protect = settings.protect_metrics if path.endswith("/metrics") else settings.protect_health
    if protect:
        check_api_key(request, settings)


def _model_name_param(
    request: Request,
    settings: SettingsDep,
    model: Annotated[
        str | None,
        Query(max_length=128, description="Model name from GET /models; default: the server's"),
    ] = None,
) -> str:
    name = model or request.path_params.get("model_name") or settings.default_model
    return str(name)


def resolve_model(
    name: Annotated[str, Depends(_model_name_param)], registry: RegistryDep
) -> ServedModel:
    """Look a model name up in the registry (never used as a path); 404 names what exists."""
    served = registry.get(name)  # held by this request until it is answered
    if served is None:
        known = ", ".join(sorted(registry.models)) or "none"
        why = registry.failed.get(name)
        detail = f" (failed to load: {why})" if why else ""
        if name in registry.unloaded:
            detail = " (unloaded; POST /v2/repository/models/NAME/load serves it again)"
        raise ModelNotFound(f"unknown model {name[:64]!r}{detail}; served models: {known}")
    return served


AuthDep = Depends(check_api_key)
ModelDep = Annotated[ServedModel, Depends(resolve_model)]
