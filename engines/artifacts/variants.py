"""What the server may load from a build: accepted variants whose artifacts are intact and were
built for this host's tools and device. Anything else is refused with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engines.artifacts.manifest import Accuracy, Manifest, Variant
from engines.errors import ArtifactMismatchError
from engines.precision import Precision
from engines.runtime.host import HostInfo, current_host
from engines.sources.registry import sha256_file


@dataclass(frozen=True)
class ServableVariant:
    """An accepted, verified variant: what the server loads and what ``auto`` chooses by."""

    precision: Precision
    backend: str
    device: str
    artifact: Path
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch size -> median ms
    accuracy: Accuracy | None = None
    status: str = "accepted"

    @property
    def agreement(self) -> float | None:
        """mAP50-95 agreement with FP32."""
        return self.accuracy.map50_95_agreement if self.accuracy else None


def verify_variant(variant: Variant, folder: Path, host: HostInfo) -> Path:
    """The artifact path if it may be served here; ``ArtifactMismatchError`` saying why not
    (other backend, device or tool version than this host's; missing or altered artifact)."""
    rebuild = "rebuild with `detect-serve build`"
    if variant.backend != host.backend:
        raise ArtifactMismatchError(
            f"{variant.precision.value}: built for backend {variant.backend}, server runs "
            f"{host.backend}; {rebuild}"
        )
    if variant.device != host.device:
        raise ArtifactMismatchError(
            f"{variant.precision.value}: built on device {variant.device!r}, this host has "
            f"{host.device!r}; {rebuild}"
        )
    for tool, version in variant.tool_versions.items():
        here = host.tool_versions.get(tool, "missing")
        if version != here:
            raise ArtifactMismatchError(
                f"{variant.precision.value}: built with {tool} {version}, this host has {here}; "
                f"{rebuild}"
            )
    if variant.artifact is None or variant.artifact_sha256 is None:
        raise ArtifactMismatchError(
            f"{variant.precision.value}: manifest names no artifact; {rebuild}"
        )
    path = folder / variant.artifact
    if not path.is_file():
        raise ArtifactMismatchError(
            f"{variant.precision.value}: artifact {path} is missing; {rebuild}"
        )
    actual = sha256_file(path)
    if actual != variant.artifact_sha256:
        raise ArtifactMismatchError(
            f"{variant.precision.value}: {path.name} has sha256 {actual[:16]}..., the manifest "
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
    (rejected by the build, or refused here) come back so the server can answer a request for
    them with the reason. Raises ``ArtifactMismatchError`` when there is no manifest at all.
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
        if variant.precision in refused or any(s.precision == variant.precision for s in servable):
            continue
        if not variant.accepted:
            refused[variant.precision] = variant.status
            continue
        try:
            path = verify_variant(variant, folder, host)
        except ArtifactMismatchError as exc:
            refused[variant.precision] = f"refused: {exc}"
            continue
        servable.append(
            ServableVariant(
                variant.precision,
                variant.backend,
                variant.device,
                path,
                {int(b): ms for b, ms in variant.latency_ms.items()},
                variant.accuracy,
                variant.status,
            )
        )
    return servable, refused
