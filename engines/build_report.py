"""The table `detect-serve build` prints at the end."""

from __future__ import annotations

from engines.manifest import Manifest


def summary_table(manifest: Manifest) -> str:
    header = (
        f"{'precision':<9} {'status':<10} {'mAP50-95 agr':>12} {'mAP50 agr':>9} "
        f"{'float nodes':>11} {'ms @1':>8} {'ms @max':>8} {'img/s':>7}  artifact"
    )
    lines = [
        f"model {manifest.model} ({manifest.layout}, {manifest.input_size[0]}x"
        f"{manifest.input_size[1]}, source sha256 {manifest.source_sha256[:12]})",
        header,
        "-" * len(header),
    ]
    for v in manifest.variants:
        acc = v.accuracy
        latency = {int(b): ms for b, ms in v.latency_ms.items()}
        top = max(latency) if latency else None
        lines.append(
            f"{v.precision.value:<9} {'accepted' if v.accepted else 'REJECTED':<10} "
            f"{acc.map50_95_agreement if acc else float('nan'):>12.4f} "
            f"{acc.map50_agreement if acc else float('nan'):>9.4f} {len(v.kept_float):>11} "
            f"{latency.get(1, float('nan')):>8.1f} "
            f"{latency[top] if top else float('nan'):>8.1f} "
            f"{(top * 1000 / latency[top]) if top else float('nan'):>7.1f}  {v.artifact or '-'}"
        )
        if not v.accepted:
            lines.append(f"          why: {v.status}")
    return "\n".join(lines)
