"""``detect-serve build``: make precision variants of a model, prove them, time them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import yaml

from engines.runtime.backends import backend_names
from service import extras
from service.config import Settings


def add_build_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = sub.add_parser(
        "build",
        help="build FP32/FP16/INT8 variants, check each against FP32, time them",
        description="MODEL is a built-in model, a name in the model repository "
        "($DETECT_HOME/models/NAME/) or a path to an .onnx file (then --name is required and the "
        "file is added to the repository).",
    )
    build.add_argument("model", help="model name, or path/to/model.onnx with --name")
    build.add_argument("--name", help="repository name for a model given as a path")
    build.add_argument(
        "--precision",
        default=None,
        help="comma-separated precisions (default: model.yaml build.precisions, else "
        "fp32,fp16,int8)",
    )
    build.add_argument("--calib", type=Path, help="folder of calibration images (INT8)")
    build.add_argument("--val", type=Path, help="folder of validation images")
    build.add_argument("--labels", type=Path, help="COCO json with real labels for --val")
    build.add_argument("--backend", choices=backend_names(), default=None)
    build.add_argument("--max-batch", type=int, default=None)
    build.add_argument(
        "--calib-method", choices=["minmax", "entropy", "percentile"], default="minmax"
    )
    build.add_argument(
        "--imgsz",
        type=parse_imgsz,
        help="input size H,W (or one number) for a model whose input height/width are symbolic "
        "and whose metadata has no imgsz; overrides model.yaml's input_size",
    )
    build.add_argument(
        "--calib-images", type=int, default=48, help="demo calibration images without --calib"
    )
    build.add_argument(
        "--val-images", type=int, default=24, help="demo validation images without --val"
    )
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=cmd_build)


def parse_imgsz(text: str) -> tuple[int, int]:
    """``640`` or ``320,480`` (height, width) -> (h, w); argparse reports a ValueError."""
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"--imgsz wants H,W or one positive number, got {text!r}")
    return parts[0], parts[1]


def _model_dir(args: argparse.Namespace, settings: Settings) -> Path:
    from engines.sources.repository import source_onnx

    model: str = args.model
    name: str | None = args.name
    given = Path(model)
    if given.suffix == ".onnx" or given.is_file():
        if not name:
            raise ValueError("a model given as a file needs --name NAME")
        if not given.is_file():
            raise ValueError(f"{given} does not exist")
        target = source_onnx(settings.models_dir, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != given.read_bytes():
            shutil.copyfile(given, target)
        return target.parent.parent
    return settings.models_dir / model


ALL = ("fp32", "fp16", "int8")


def remember_input_size(model_dir: Path, size: tuple[int, int]) -> None:
    """Record ``--imgsz`` in the model's ``model.yaml`` (made if missing) so the server
    letterboxes to the size the model was built for; refuse one that says otherwise."""
    meta = model_dir / "model.yaml"
    line = f"input_size: [{size[0]}, {size[1]}]\n"
    if not meta.is_file():
        meta.write_text(f"name: {model_dir.name}\n{line}")
        return
    own = (yaml.safe_load(meta.read_text()) or {}).get("input_size")
    if own is None:
        with meta.open("a") as f:
            f.write(line)
    elif tuple(own) != size:
        raise ValueError(f"{meta} has input_size {own}; edit it or leave out --imgsz {size}")


def require_backend(command: str, backend: str) -> None:
    """Name the extra a backend needs to serve before any work starts (``extras.MissingExtra``).

    ``build`` does not call it: a build for a backend that cannot compile here still makes and
    checks its variant ONNX and records them pending (compiled where the backend is installed).
    """
    if backend == "tensorrt":
        extras.require(f"{command} with backend tensorrt", "gpu")


@contextlib.contextmanager
def quiet_tool_warnings() -> Iterator[None]:
    """The converters' per-tensor chatter (fp16 truncation notes, ORT's pre-processing hint)
    would bury the build's own progress; errors still come through."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            yield
        finally:
            root.setLevel(level)


def cmd_build(args: argparse.Namespace) -> int:
    from engines.artifacts.manifest import manifest_path
    from engines.build.builder import BuildConfig, build_model
    from engines.build.report import summary_table
    from engines.model.config import BuildSection
    from engines.precision import Precision
    from engines.sources.repository import ensure_model_source, read_model_spec

    settings = Settings()
    backend = args.backend or settings.backend
    model_dir = _model_dir(args, settings)
    if args.imgsz:
        remember_input_size(model_dir, args.imgsz)
    ensure_model_source(model_dir, progress=sys.stdout.isatty())  # built-in, fetched or added
    spec = read_model_spec(model_dir)
    own = spec.build.resolved(model_dir) if spec and spec.build else BuildSection()
    precisions = args.precision.split(",") if args.precision else own.precisions
    own_batch = spec.batching.max_batch if spec and spec.batching else None
    config = BuildConfig(
        precisions=tuple(Precision(p.strip()) for p in precisions or ALL if p.strip()),
        calib_dir=args.calib or own.calib_dir,
        val_dir=args.val or own.val_dir,
        labels=args.labels or own.labels,
        backend=backend,
        max_batch=args.max_batch or own_batch or settings.max_batch,
        calibration_method=args.calib_method,
        force=args.force,
        providers=tuple(settings.ort_providers),
        input_size=args.imgsz,
        calibration_images=args.calib_images,
        validation_images=args.val_images,
    )
    with quiet_tool_warnings():
        manifest = build_model(model_dir, settings.engines_dir, config, progress=True)
    print(summary_table(manifest))
    print(f"manifest: {manifest_path(settings.engines_dir, manifest.model)}")
    built = [
        v
        for v in manifest.variants
        if v.backend == config.backend and v.precision in config.precisions
    ]
    if any(v.status == "pending" for v in built):
        print(
            f"pending: {config.backend} cannot compile on this host; the pending variants' ONNX "
            "passed its check here, and their artifacts are compiled and checked against FP32 "
            "where it can (see why: above)."
        )
    # Success: some requested variant of this backend is usable (accepted, or pending its plan).
    return 0 if any(v.accepted or v.status == "pending" for v in built) else 1
