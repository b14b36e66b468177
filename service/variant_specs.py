"""Which variant artifacts a model has: built ones from the manifest, else its source as FP32."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from engines.artifacts.variants import load_servable_variants
from engines.errors import EngineLoadError
from engines.precision import Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantSpec:
    """One servable artifact and what the build measured about it."""

    precision: Precision
    backend: str
    artifact: Path
    agreement: float | None = None  # mAP50-95 agreement with FP32 (FP32 is 1.0)
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch size -> median ms
    note: str = ""
    # Set by the registry from the model's effective configuration before the engine loads.
    input_size: tuple[int, int] | None = None  # (height, width) for symbolic spatial dims
    max_batch: int | None = None  # the model's effective max batch (else the global one)

    @property
    def per_image_latency_s(self) -> float | None:
        if not self.latency_ms:
            return None
        batch, ms = max(self.latency_ms.items())  # the throughput-relevant figure
        return ms / 1000 / batch


def source_onnx(models_dir: Path, name: str) -> Path:
    """Where ``detect-serve models fetch`` (or ``build --name``) puts a model's source ONNX."""
    return models_dir / name / "source" / "model.onnx"


def discover_variants(
    models_dir: Path,
    engines_dir: Path,
    name: str,
    backend: str,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
) -> tuple[Path, list[VariantSpec], dict[str, str]]:
    """Return (source onnx, servable variants, precision -> reason it is not served).

    Without a build the source model is served as FP32 through ONNX Runtime, so a freshly
    fetched model answers requests before anyone runs ``detect-serve build``.
    """
    source = source_onnx(models_dir, name)
    if not source.is_file():
        raise EngineLoadError(
            f"model {name!r} has no source at {source}; run `detect-serve models fetch {name}` "
            f"or `detect-serve build path/to/model.onnx --name {name}`"
        )
    manifest = engines_dir / name / "manifest.json"
    if not manifest.is_file():
        log.warning("%s has no build in %s; serving the source model as fp32", name, engines_dir)
        return (
            source,
            [
                VariantSpec(
                    Precision.FP32, "onnxruntime", source, 1.0, note="source model, not built"
                )
            ],
            {},
        )
    return (source, *_from_manifest(engines_dir, name, backend, providers))


def _from_manifest(
    engines_dir: Path, name: str, backend: str, providers: tuple[str, ...]
) -> tuple[list[VariantSpec], dict[str, str]]:
    servable, refused = load_servable_variants(engines_dir, name, backend, providers)
    for precision, why in refused.items():
        log.warning("%s/%s not served: %s", name, precision.value, why)
    specs = [
        VariantSpec(
            precision=v.precision,
            backend=v.backend,
            artifact=v.artifact,
            agreement=v.agreement,
            latency_ms=dict(v.latency_ms),
        )
        for v in servable
    ]
    return specs, {p.value: why for p, why in refused.items()}
