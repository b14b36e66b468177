"""``detect-serve build``: ONNX model -> FP32 / FP16 / INT8 variants, checked, timed, recorded.

A chain of small steps: load the model -> make each variant -> (compile, TensorRT) -> validate
against FP32 on real images -> time -> record in the manifest. Builds are cached per variant by a
key over everything that changes the result (source, calibration and validation data, options,
tool versions, device): same key and intact artifact -> no work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engines.build_steps import (
    Candidate,
    EngineLoader,
    Int8Search,
    Reference,
    make_fp16,
    make_fp32,
    make_int8,
)
from engines.build_steps import measure as measure_accuracy
from engines.calibration import ImageSet
from engines.errors import EngineError, ModelFormatError
from engines.formats import detect_layout
from engines.host import HostInfo, current_host
from engines.manifest import Calibration, Manifest, Variant
from engines.model_info import ModelInfo, read_model_info
from engines.precision import Precision
from engines.quantize import CalibrationName, Int8Options
from engines.runtime.base import Engine
from engines.sample_images import CALIBRATION_PHOTOS, VALIDATION_PHOTOS
from engines.sources import sha256_file
from engines.timing import batch_sizes, time_engine
from engines.validate import CANDIDATE_CONF, detect_all

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budgets:
    """Minimum mAP50-95 agreement with FP32 for a variant to be accepted."""

    fp16: float = 0.99
    int8: float = 0.95

    def of(self, precision: Precision) -> float:
        return {Precision.FP32: 1.0, Precision.FP16: self.fp16, Precision.INT8: self.int8}[
            precision
        ]


@dataclass(frozen=True)
class BuildConfig:
    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
    calib_dir: Path | None = None
    val_dir: Path | None = None
    labels: Path | None = None
    backend: str = "onnxruntime"
    max_batch: int = 8
    calibration_method: CalibrationName = "minmax"
    calibration_images: int = 48
    validation_images: int = 24
    budgets: Budgets = field(default_factory=Budgets)
    mixed_precision: bool = True  # False: whole-graph INT8, no float-kept nodes
    max_fallbacks: int = 6
    force: bool = False
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    timing: bool = True


def _say(progress: bool, message: str) -> None:
    log.info("%s", message)
    if progress:
        print(f"  {message}", file=sys.stderr, flush=True)


def _loader(config: BuildConfig, max_batch: int) -> EngineLoader:
    from engines.runtime.onnxruntime import OnnxRuntimeEngine

    def load(path: Path, precision: Precision) -> Engine:
        return OnnxRuntimeEngine(path, precision, providers=config.providers, max_batch=max_batch)

    return load


def _cache_key(
    source_sha: str,
    precision: Precision,
    config: BuildConfig,
    host: HostInfo,
    calib_hash: str,
    val_hash: str,
) -> str:
    relevant = {
        "source": source_sha,
        "precision": precision.value,
        "backend": config.backend,
        "budget": config.budgets.of(precision),
        "host": asdict(host),
        "val": val_hash,
        "max_batch": config.max_batch,
        "labels": sha256_file(config.labels) if config.labels else None,
    }
    if precision is Precision.INT8:
        relevant |= {
            "calib": calib_hash,
            "method": config.calibration_method,
            "mixed": config.mixed_precision,
            "fallbacks": config.max_fallbacks,
        }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _cached(manifest: Manifest | None, precision: Precision, key: str, out: Path) -> Variant | None:
    old = manifest.variant(precision) if manifest else None
    if old is None or old.cache_key != key:
        return None
    if old.artifact is None:
        return old  # a recorded rejection with the same inputs stays rejected
    path = out / old.artifact
    return old if path.is_file() and sha256_file(path) == old.artifact_sha256 else None


def _load_model(model_dir: Path) -> tuple[Path, ModelInfo, str]:
    source = model_dir / "source" / "model.onnx"
    if not source.is_file():
        raise ModelFormatError(f"{source} does not exist; fetch or add the model first")
    info = read_model_info(source, model_dir.name)
    layout = detect_layout(info.outputs, info.num_classes, info.layout)
    return source, info, layout.name


def build_model(
    model_dir: Path, engines_dir: Path, config: BuildConfig, *, progress: bool = True
) -> Manifest:
    """Build (or reuse) every requested variant of the model in ``model_dir``."""
    source, info, layout_name = _load_model(model_dir)
    out = engines_dir / info.name
    out.mkdir(parents=True, exist_ok=True)
    host = current_host(config.backend, config.providers)
    source_sha = sha256_file(source)
    previous = Manifest.load(out)
    manifest = Manifest(
        model=info.name,
        source_path=str(source),
        source_sha256=source_sha,
        layout=layout_name,
        input_size=info.input_size,
        class_names=list(info.class_names),
    )
    if config.labels is not None and config.val_dir is None:
        raise EngineError("--labels needs --val: the labelled images themselves")
    val = (
        ImageSet.from_folder(config.val_dir)
        if config.val_dir
        else ImageSet.from_samples(VALIDATION_PHOTOS, config.validation_images)
    )
    calib: ImageSet | None = None
    if Precision.INT8 in config.precisions:
        calib = (
            ImageSet.from_folder(config.calib_dir)
            if config.calib_dir
            else ImageSet.from_samples(CALIBRATION_PHOTOS, config.calibration_images)
        )
        if calib.content_hash == val.content_hash:
            raise EngineError("calibration and validation images must be different sets")
    keys = {
        p: _cache_key(
            source_sha, p, config, host, calib.content_hash if calib else "", val.content_hash
        )
        for p in config.precisions
    }
    todo = [
        p for p in config.precisions if config.force or _cached(previous, p, keys[p], out) is None
    ]
    for p in config.precisions:
        if p not in todo:
            _say(progress, f"{p.value}: cached, nothing to do")
            manifest.variants.append(_cached(previous, p, keys[p], out))  # type: ignore[arg-type]
    if todo:
        _build_todo(todo, source, info, out, val, calib, config, host, keys, manifest, progress)
    manifest.variants.sort(key=lambda v: list(Precision).index(v.precision))
    manifest.save(out)
    return manifest


def _build_todo(
    todo: list[Precision],
    source: Path,
    info: ModelInfo,
    out: Path,
    val: ImageSet,
    calib: ImageSet | None,
    config: BuildConfig,
    host: HostInfo,
    keys: dict[Precision, str],
    manifest: Manifest,
    progress: bool,
) -> None:
    load = _loader(config, config.max_batch)
    layout = detect_layout(info.outputs, info.num_classes, info.layout)
    pad = info.metadata.get("pad_value", "114")
    pad_value = int(pad) if pad.isdigit() else 114
    _say(progress, f"reference: FP32 on {len(val)} validation images ({val.description})")
    reference_engine = load(source, Precision.FP32)
    detections = detect_all(
        reference_engine, val, layout, info.input_size, pad_value, CANDIDATE_CONF
    )
    reference_engine.close()
    ref = Reference(val, detections, info, layout, pad_value, config.labels)
    for precision in todo:
        started = time.perf_counter()
        variant = Variant(
            precision=precision,
            backend=config.backend,
            device=host.device,
            status="building",
            tool_versions=host.tool_versions,
            cache_key=keys[precision],
        )
        try:
            _build_one(precision, source, out, ref, calib, config, load, variant, progress)
        except (EngineError, OSError, ValueError, RuntimeError) as exc:
            variant.status = f"rejected: build failed: {exc}"
            variant.artifact = variant.artifact_sha256 = None
        variant.build_seconds = round(time.perf_counter() - started, 1)
        _say(progress, f"{precision.value}: {variant.status} ({variant.build_seconds}s)")
        manifest.variants = [v for v in manifest.variants if v.precision != precision]
        manifest.variants.append(variant)
        manifest.save(out)  # progress survives an interrupted build; nothing unproven is accepted


def _build_one(
    precision: Precision,
    source: Path,
    out: Path,
    ref: Reference,
    calib: ImageSet | None,
    config: BuildConfig,
    load: EngineLoader,
    variant: Variant,
    progress: bool,
) -> None:
    budget = config.budgets.of(precision)
    candidate: Candidate
    if precision is Precision.INT8:
        assert calib is not None
        options = Int8Options(
            config.calibration_method,
            symmetric_activations=config.backend == "tensorrt",
            op_types=("Conv",) if config.mixed_precision else None,
        )
        search = Int8Search(calib, options, budget, config.mixed_precision, config.max_fallbacks)
        _say(progress, f"int8: calibrating on {len(calib)} images ({calib.description})")
        candidate = make_int8(
            source,
            out,
            ref,
            search,
            load,
            lambda m: _say(progress, m),
        )
        variant.calibration = Calibration(
            method=config.calibration_method,
            image_count=len(calib),
            content_hash=calib.content_hash,
            source=calib.description,
        )
    elif precision is Precision.FP16:
        candidate = make_fp16(source, out)
    else:
        candidate = make_fp32(source, out)
    artifact = candidate.onnx_path
    if config.backend == "tensorrt":
        from engines.tensorrt_build import build_plan

        plan = artifact.with_suffix(".plan")
        build_plan(
            artifact,
            plan,
            opt_batch=max(1, config.max_batch // 2),
            max_batch=config.max_batch,
            workspace_bytes=2 << 30,
            timing_cache_path=out / "timing.cache",
        )
        artifact = plan
    engine = _engine_for(config, artifact, precision, load)
    try:
        if candidate.accuracy is None or config.backend == "tensorrt":
            _say(progress, f"{precision.value}: checking against FP32")
            candidate.accuracy = measure_accuracy(engine, ref, budget)
        if config.timing:
            _say(progress, f"{precision.value}: timing batch sizes up to {config.max_batch}")
            variant.latency_ms = time_engine(engine, batch_sizes(config.max_batch))
            variant.images_per_s = {
                b: round(b * 1000 / ms, 2) for b, ms in variant.latency_ms.items()
            }
    finally:
        engine.close()
    variant.accuracy = candidate.accuracy
    variant.kept_float = candidate.kept_float or []
    variant.artifact, variant.artifact_sha256 = artifact.name, sha256_file(artifact)
    score = candidate.accuracy.map50_95_agreement
    variant.status = (
        "accepted"
        if score >= budget
        else f"rejected: mAP50-95 agreement {score:.4f} < budget {budget}"
    )


def _engine_for(
    config: BuildConfig, artifact: Path, precision: Precision, load: EngineLoader
) -> Engine:
    if config.backend == "tensorrt":
        from engines.runtime.tensorrt import TensorRTEngine

        trt: Engine = TensorRTEngine(artifact, precision, max_batch=config.max_batch)
        return trt
    return load(artifact, precision)
