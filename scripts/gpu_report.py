"""The JSON report of ``scripts/gpu_check.sh``: each TensorRT plan's agreement with ONNX Runtime
CPU FP32 and its latency per batch size, from the build manifest, with the host's GPU stack.

    python scripts/gpu_report.py ENGINES/MODEL [--batches 1,8,32]
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from engines.artifacts.manifest import Manifest
from engines.runtime.host import gpu_name

PACKAGES = ("tensorrt-cu13", "onnxruntime-gpu", "cuda-bindings", "onnx", "detect-serve")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def report(folder: Path, batches: list[int]) -> dict[str, Any]:
    manifest = Manifest.load(folder)
    if manifest is None:
        raise SystemExit(f"no manifest in {folder}: the build did not run")
    plans = []
    for v in manifest.variants:
        if v.backend != "tensorrt":
            continue
        latency = {int(b): ms for b, ms in v.latency_ms.items()}
        plans.append(
            {
                "precision": v.precision.value,
                "status": v.status,
                "reason": v.reason,
                "artifact": v.artifact,
                "agreement_map50_95_vs_ort_cpu_fp32": (
                    v.accuracy.map50_95_agreement if v.accuracy else None
                ),
                "agreement_map50_vs_ort_cpu_fp32": v.accuracy.map50_agreement
                if v.accuracy
                else None,
                "reference_boxes": v.accuracy.reference_boxes if v.accuracy else None,
                "validation_images": v.accuracy.validation_images if v.accuracy else None,
                "latency_ms": {b: latency.get(b) for b in batches},
                "images_per_s": {
                    b: round(b * 1000 / latency[b], 1) if b in latency else None for b in batches
                },
                "kept_float": [k.node for k in v.kept_float],
                "tool_versions": v.tool_versions,
            }
        )
    return {
        "model": manifest.model,
        "gpu": gpu_name(),
        "packages": {p: _version(p) for p in PACKAGES},
        "plans": plans,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--batches", default="1,8,32")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    json.dump(report(args.folder, batches), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
