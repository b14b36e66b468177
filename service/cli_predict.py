"""``detect-serve predict PATH|DIR``: detections for local images, in this process.

The same pieces as the server (variant discovery, engine, ``ImagePipeline`` pre- and
post-processing, precision choice) without HTTP or batching: a table on stdout, and optionally
JSON (``--json``) and annotated copies of the images (``--save DIR``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.config import Settings
    from service.registry import ServedModel, ServedVariant

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def add_predict_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    predict = sub.add_parser(
        "predict",
        help="detect objects in local images (no server needed)",
        description="PATH is an image or a folder of images; the model runs in this process.",
    )
    predict.add_argument("path", type=Path, help="an image file or a folder of images")
    predict.add_argument("--model", help="model name (default: DETECT_DEFAULT_MODEL)")
    predict.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8"])
    predict.add_argument("--conf", type=float, default=0.25, help="score threshold")
    predict.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    predict.add_argument("--classes", help="class ids or names, comma separated")
    predict.add_argument("--save", type=Path, help="write annotated images into this folder")
    predict.add_argument(
        "--json", nargs="?", const="-", help="write JSON results to FILE (stdout: no value)"
    )
    predict.set_defaults(func=cmd_predict)


def _images(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return found
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return [path]


def cmd_predict(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.metrics import Metrics
    from service.registry import ModelRegistry

    if not (0 <= args.conf <= 1 and 0 <= args.iou <= 1):
        raise ValueError("--conf and --iou must be within [0, 1]")
    images = _images(args.path)
    base = Settings()
    name = args.model or base.default_model
    settings = base.model_copy(update={"models": [name], "default_model": name})
    registry = ModelRegistry(settings, Metrics())
    registry.load()
    if name not in registry.models:
        raise ValueError(f"model {name!r} could not be loaded: {registry.failed.get(name)}")
    model = registry.models[name]
    precision = model.selector.select(args.precision, model.unavailable)
    variant = model.variants[precision]
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    try:
        results = [
            r for path in images if (r := _predict_one(path, model, variant, args, settings))
        ]
    finally:
        for v in model.variants.values():
            v.engine.close()
    report: dict[str, Any] = {
        "model": name,
        "precision": precision.value,
        "backend": variant.engine.backend,
        "results": results,
    }
    if args.json == "-":
        print(json.dumps(report, indent=2))
        return 0
    _print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _predict_one(
    path: Path,
    model: ServedModel,
    variant: ServedVariant,
    args: argparse.Namespace,
    settings: Settings,
) -> dict[str, Any] | None:
    """One image through the pipeline (None, with a note on stderr, when it does not decode)."""
    from engines.errors import ImageDecodeError
    from engines.model.annotate import annotate
    from engines.model.pipeline import DetectOptions

    data = path.read_bytes()
    try:
        prepared = model.pipeline.prepare(data)
    except ImageDecodeError as exc:
        print(f"{path}: skipped ({exc})", file=sys.stderr)
        return None
    options = DetectOptions(
        args.conf, args.iou, settings.max_detections, model.pipeline.parse_classes(args.classes)
    )
    dets = model.pipeline.finish(variant.engine.infer(prepared.tensor[None]), prepared, options)
    names = model.info.class_names
    boxes = [[round(float(v), 1) for v in b] for b in dets.boxes]
    scores = [round(float(s), 4) for s in dets.scores]
    class_ids = [int(c) for c in dets.class_ids]
    labels = [names[c] for c in class_ids]
    if args.save:
        drawn = annotate(data, boxes, labels, scores, class_ids, max_pixels=settings.max_pixels)
        (args.save / f"{path.stem}.jpg").write_bytes(drawn)
    return {
        "image": str(path),
        "width": prepared.width,
        "height": prepared.height,
        "detections": [
            {"label": lab, "class_id": c, "score": s, "box": b}
            for lab, c, s, b in zip(labels, class_ids, scores, boxes, strict=True)
        ],
    }


def _print_table(report: dict[str, Any]) -> None:
    results: list[dict[str, Any]] = report["results"]
    print(f"{report['model']} ({report['precision']}, {report['backend']})")
    print(f"{'image':<28} {'label':<16} {'score':>6}  box (x1, y1, x2, y2)")
    for result in results:
        image = Path(result["image"]).name
        if not result["detections"]:
            print(f"{image:<28} {'-':<16}")
        for d in result["detections"]:
            box = ", ".join(f"{v:.0f}" for v in d["box"])
            print(f"{image:<28} {d['label']:<16} {d['score']:>6.3f}  {box}")
            image = ""
    total = sum(len(r["detections"]) for r in results)
    print(f"{len(results)} image(s), {total} detection(s)")
