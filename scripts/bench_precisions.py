"""Latency vs batch size per precision, from a build's manifest: a table and a PNG plot.

    python scripts/bench_precisions.py [--engines engines_cache] [--model yolov3-tiny-coco]
                                       [--out bench-results/precisions.png] [--remeasure]

The manifest's timings were measured by `detect-serve build` in-process after warm-up;
`--remeasure` times the artifacts again now (same method) instead of reading them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.manifest import Manifest
from engines.runtime.onnxruntime import OnnxRuntimeEngine
from engines.timing import batch_sizes, time_engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", type=Path, default=Path("engines_cache"))
    parser.add_argument("--model", default="yolov3-tiny-coco")
    parser.add_argument("--out", type=Path, default=Path("bench-results/precisions.png"))
    parser.add_argument("--remeasure", action="store_true")
    args = parser.parse_args()
    folder = args.engines / args.model
    manifest = Manifest.load(folder)
    if manifest is None:
        parser.error(f"no manifest in {folder}; run detect-serve build {args.model}")
    series: dict[str, dict[int, float]] = {}
    for v in manifest.variants:
        if v.artifact is None:
            continue
        if args.remeasure:
            engine = OnnxRuntimeEngine(folder / v.artifact, v.precision)
            series[v.precision.value] = time_engine(engine, batch_sizes(8))
            engine.close()
        else:
            series[v.precision.value] = {int(b): ms for b, ms in v.latency_ms.items()}
    sizes = sorted({b for s in series.values() for b in s})
    print("| batch | " + " | ".join(f"{p} ms (img/s)" for p in series) + " |")
    print("|---|" + "---|" * len(series))
    for b in sizes:
        cells = [f"{s[b]:.1f} ({b * 1000 / s[b]:.1f})" if b in s else "-" for s in series.values()]
        print(f"| {b} | " + " | ".join(cells) + " |")
    for v in manifest.variants:
        acc = v.accuracy
        if acc:
            print(
                f"{v.precision.value}: mAP50-95 agreement {acc.map50_95_agreement:.4f}, "
                f"mAP50 {acc.map50_agreement:.4f} on {acc.validation_images} images, "
                f"{acc.reference_boxes} reference boxes; {v.status}"
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in series.items():
        ax.plot(list(s), list(s.values()), "o-", label=name)
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch, ms (median)")
    ax.set_xscale("log", base=2)
    ax.set_title(f"{args.model}: latency vs batch size")
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
