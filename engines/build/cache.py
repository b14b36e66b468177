"""When a build may reuse a recorded variant: same inputs, intact artifact -> no work."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import VariantRecord
from engines.precision import Precision
from engines.runtime.host import HostInfo
from engines.sources.registry import sha256_file


def cache_key(inputs: dict[str, Any], host: HostInfo) -> str:
    """Digest of everything that changes what a variant computes or how it was judged: source,
    data sets, options, tool versions and device (``host``)."""
    relevant = {**inputs, "host": asdict(host)}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def cached_variant(
    manifest: Manifest | None,
    variant_key: str,
    folder: Path,
    precision: Precision,
    backend: str,
) -> VariantRecord | None:
    """``backend``'s recorded variant of ``precision`` if its key matches and its artifact still
    has the recorded sha256."""
    old = manifest.variant(precision, backend) if manifest else None
    if old is None or old.cache_key != variant_key:
        return None
    if old.artifact is None:
        return old  # a recorded rejection with the same inputs stays rejected
    path = folder / old.artifact
    return old if path.is_file() and sha256_file(path) == old.artifact_sha256 else None
