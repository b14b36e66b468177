"""Latency vs batch size per precision, from a build's manifest: a table and a PNG plot.

    python scripts/bench_precisions.py [--engines DIR] [--model yolov3-tiny-coco]
                                       [--out bench-results/precisions.png] [--remeasure]

The manifest's timings were measured by `detect-serve build` in-process after warm-up;
`--remeasure` times the artifacts again now (same method, same batch sizes) instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.artifacts.manifest import Manifest
from engines.build.timing import batch_sizes, time_engine
from engines.sources.home import HomeSettings

Series = dict[str, dict[int, float]]  # precision -> batch size -> median ms


def measure(folder: Path, manifest: Manifest, max_batch: int, remeasure: bool) -> Series:
    from engines.runtime.onnxruntime import OnnxRuntimeEngine

    series: Series = {}
    for v in manifest.variants:
        if v.artifact is None or not v.artifact.endswith(".onnx"):
            continue
        if remeasure:
            engine = OnnxRuntimeEngine(folder / v.artifact, v.precision, max_batch=max_batch)
            series[v.precision.value] = time_engine(engine, batch_sizes(max_batch))
            engine.close()
        else:
            series[v.precision.value] = v.latency_ms
    return series


def table(series: Series) -> str:
    sizes = sorted({b for s in series.values() for b in s})
    lines = [
        "| batch | " + " | ".join(f"{p} ms (img/s)" for p in series) + " |",
        "|---|" + "---|" * len(series),
    ]
    for b in sizes:
        cells = [f"{s[b]:.1f} ({b * 1000 / s[b]:.1f})" if b in s else "-" for s in series.values()]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement_lines(manifest: Manifest) -> list[str]:
    lines = []
    for v in manifest.variants:
        acc = v.accuracy
        if acc:
            lines.append(
                f"{v.precision.value}: mAP50-95 agreement {acc.map50_95_agreement:.4f}, "
                f"mAP50 {acc.map50_agreement:.4f} on {acc.validation_images} images, "
                f"{acc.reference_boxes} reference boxes; {len(v.kept_float)} nodes kept float; "
                f"{v.status}{': ' + v.reason if v.reason else ''}"
            )
    return lines


def plot(series: Series, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in series.items():
        ax.plot(list(s), list(s.values()), "o-", label=name)
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch, ms (median)")
    ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--engines", type=Path, default=None, help="default: DETECT_ENGINES_DIR (in the home)"
    )
    parser.add_argument("--model", default="yolov3-tiny-coco")
    parser.add_argument("--out", type=Path, default=Path("bench-results/precisions.png"))
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--remeasure", action="store_true")
    args = parser.parse_args()
    folder = (args.engines or HomeSettings().engines_dir) / args.model
    manifest = Manifest.load(folder)
    if manifest is None:
        parser.error(f"no manifest in {folder}; run detect-serve build {args.model}")
    series = measure(folder, manifest, args.max_batch, args.remeasure)
    device = manifest.variants[0].device if manifest.variants else "?"
    print(table(series))
    print("\n".join(agreement_lines(manifest)))
    plot(series, f"{args.model} on {device}: latency vs batch size", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
