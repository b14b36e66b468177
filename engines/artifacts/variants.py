"""Which variants of a model the server may load, and why the others are not served.

Built variants come from the manifest: accepted ones whose artifacts are intact and were built
for this host's backend, tools and device. A model without a build is served from its source
ONNX as FP32, so a freshly fetched model answers before anyone runs ``detect-serve build``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engines.artifacts.manifest import Manifest, manifest_path
from engines.artifacts.record import VariantRecord
from engines.errors import ArtifactMismatchError, EngineLoadError
from engines.precision import Precision
from engines.runtime.backends import ONNX_BACKEND, current_host
from engines.runtime.host import HostInfo
from engines.sources.registry import sha256_file
from engines.sources.repository import source_onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServableVariant:
    """A verified variant: its record and where its artifact is on this host."""

    record: VariantRecord
    path: Path


@dataclass(frozen=True)
class ModelVariants:
    """What a model can serve: its source, its servable variants, why the others are not."""

    source: Path
    servable: list[ServableVariant]
    refused: dict[Precision, str]


def verify_variant(variant: VariantRecord, folder: Path, host: HostInfo) -> Path:
    """The artifact path if it may be served here; ``ArtifactMismatchError`` saying why not
    (other backend, device or tool version than this host's; missing or altered artifact)."""
    rebuild = "rebuild with `detect-serve build`"
    name = variant.precision.value
    if variant.backend != host.backend:
        raise ArtifactMismatchError(
            f"{name}: built for backend {variant.backend}, server runs {host.backend}; {rebuild}"
        )
    if variant.device != host.device:
        raise ArtifactMismatchError(
            f"{name}: built on device {variant.device!r}, this host has {host.device!r}; {rebuild}"
        )
    for tool, version in variant.tool_versions.items():
        here = host.tool_versions.get(tool, "missing")
        if version != here:
            raise ArtifactMismatchError(
                f"{name}: built with {tool} {version}, this host has {here}; {rebuild}"
            )
    if variant.artifact is None or variant.artifact_sha256 is None:
        raise ArtifactMismatchError(f"{name}: manifest names no artifact; {rebuild}")
    path = folder / variant.artifact
    if not path.is_file():
        raise ArtifactMismatchError(f"{name}: artifact {path} is missing; {rebuild}")
    actual = sha256_file(path)
    if actual != variant.artifact_sha256:
        raise ArtifactMismatchError(
            f"{name}: {path.name} has sha256 {actual[:16]}..., the manifest "
            f"recorded {variant.artifact_sha256[:16]}... (tampered or corrupt); {rebuild}"
        )
    return path


def load_servable_variants(
    engines_dir: Path,
    model: str,
    backend: str,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
) -> tuple[list[ServableVariant], dict[Precision, str]]:
    """(variants to serve, precision -> why it is not served) from ``engines_dir/model``.

    Only accepted variants that pass ``verify_variant`` are served; the reasons for the rest
    (rejected or pending in the build, or refused here) come back so the server can answer a
    request for them with the reason. Raises ``ArtifactMismatchError`` when there is no manifest
    at all.
    """
    folder = engines_dir / model
    manifest = Manifest.load(folder)
    if manifest is None:
        raise ArtifactMismatchError(f"no manifest in {folder}; run `detect-serve build {model}`")
    host = current_host(backend, providers)
    servable: list[ServableVariant] = []
    refused: dict[Precision, str] = {}
    # One manifest holds every backend's builds: this host's backend first, so another
    # backend's record of a precision never hides (or stands in for) this backend's own.
    ordered = sorted(manifest.variants, key=lambda v: v.backend != backend)
    for variant in ordered:
        if variant.precision in refused.keys() | {s.record.precision for s in servable}:
            continue
        if not variant.accepted:
            refused[variant.precision] = f"{variant.status}: {variant.reason}"  # rejected/pending
            continue
        try:
            servable.append(ServableVariant(variant, verify_variant(variant, folder, host)))
        except ArtifactMismatchError as exc:
            refused[variant.precision] = f"refused: {exc}"
    return servable, refused


def source_variant(source: Path, providers: tuple[str, ...]) -> ServableVariant:
    """The unbuilt source ONNX served as FP32 through the ONNX backend."""
    host = current_host(ONNX_BACKEND.name, providers)
    record = VariantRecord(
        precision=Precision.FP32,
        backend=host.backend,
        device=host.device,
        artifact=str(source),
        status="accepted",
        tool_versions=host.tool_versions,
        note="source model, not built",
    )
    return ServableVariant(record, source)


def discover_variants(
    models_dir: Path,
    engines_dir: Path,
    name: str,
    backend: str,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
) -> ModelVariants:
    """The source ONNX and servable variants of model ``name``, and why the others are not.

    Raises ``EngineLoadError`` when the model has no source at all.
    """
    source = source_onnx(models_dir, name)
    if not source.is_file():
        raise EngineLoadError(
            f"model {name!r} has no source at {source}; run `detect-serve models fetch {name}` "
            f"or `detect-serve build path/to/model.onnx --name {name}`"
        )
    if not manifest_path(engines_dir, name).is_file():
        log.warning("%s has no build in %s; serving the source model as fp32", name, engines_dir)
        return ModelVariants(source, [source_variant(source, providers)], {})
    servable, refused = load_servable_variants(engines_dir, name, backend, providers)
    for precision, why in refused.items():
        log.warning("%s/%s not served: %s", name, precision.value, why)
    return ModelVariants(source, servable, refused)
