"""``detect-serve build``: ONNX model -> FP32 / FP16 / INT8 variants, checked, timed, recorded.

A chain of small steps: load the model -> make each variant -> (compile, TensorRT) -> validate
against FP32 on real images -> time -> record in the manifest. Builds are cached per variant by a
key over everything that changes the result (source, calibration and validation data, options,
tool versions, device): same key and intact artifact -> no work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.artifacts.manifest import Calibration, Manifest, Variant
from engines.build.accuracy import CANDIDATE_CONF, detect_all
from engines.build.cache import cache_key, cached_variant
from engines.build.int8.calibration import CalibrationSet, ImageSet, image_sets
from engines.build.int8.quantize import CalibrationName, Int8Options, Int8Recipe, quantize_int8
from engines.build.int8.search import Int8Search, make_int8
from engines.build.int8.tensorrt_recipe import (
    FAKE_QUANT,
    TENSORRT_RECIPE,
    quantize_for_tensorrt,
    tensorrt_int8_options,
)
from engines.build.merge import (
    build_lock,
    carried_over,
    find,
    keeps_earlier,
    onnx_name,
    publish,
    put,
    staging,
)
from engines.build.report import Reporter
from engines.build.steps import (
    Candidate,
    EngineLoader,
    Reference,
    make_fp16,
    make_fp32,
    measure,
)
from engines.build.tensorrt_step import TensorRTStep, finish_tensorrt
from engines.build.timing import batch_sizes, time_engine
from engines.errors import EngineError, ModelFormatError
from engines.model.info import ModelInfo, read_model_info
from engines.model.layouts import detect_layout
from engines.precision import Precision
from engines.runtime.base import Engine
from engines.runtime.host import HostInfo, current_host
from engines.sources.registry import sha256_file

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
    labels: Path | None = None  # COCO json with real boxes for the files in val_dir
    backend: str = "onnxruntime"
    max_batch: int = 8
    calibration_method: CalibrationName = "minmax"
    calibration_images: int = 48  # demo set size (no calib_dir)
    validation_images: int = 24  # demo set size (no val_dir)
    budgets: Budgets = field(default_factory=Budgets)
    mixed_precision: bool = True  # False: whole-graph INT8, no float-kept nodes
    max_fallbacks: int = 6
    force: bool = False
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    timing: bool = True

    def __post_init__(self) -> None:
        if not self.precisions:
            raise ValueError("no precision requested")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.backend not in ("onnxruntime", "tensorrt"):
            raise ValueError(f"unknown backend {self.backend!r}: onnxruntime or tensorrt")
        if self.labels is not None and self.val_dir is None:
            raise ValueError("labels need val_dir: the labelled images themselves")

    def int8_options(self) -> Int8Options:
        # TensorRT takes only symmetric activations; whole-graph mode quantizes every op.
        options = Int8Options(
            self.calibration_method, op_types=("Conv",) if self.mixed_precision else None
        )
        return tensorrt_int8_options(options) if self.backend == "tensorrt" else options

    def int8_recipe(self) -> Int8Recipe:
        """Each backend gets the INT8 graph its kernels want."""
        return quantize_for_tensorrt if self.backend == "tensorrt" else quantize_int8

    def variant_inputs(self, precision: Precision) -> dict[str, Any]:
        """The options a variant of ``precision`` depends on (part of its cache key)."""
        inputs: dict[str, Any] = {
            "precision": precision.value,
            "backend": self.backend,
            "budget": self.budgets.of(precision),
            "max_batch": self.max_batch,
            "timing": self.timing,
            "labels": sha256_file(self.labels) if self.labels else None,
        }
        if precision is Precision.INT8:
            inputs |= {
                "int8": self.int8_options().describe(),
                "recipe": TENSORRT_RECIPE if self.backend == "tensorrt" else "onnxruntime-cpu",
                "mixed": self.mixed_precision,
                "fallbacks": self.max_fallbacks,
            }
        return inputs


@dataclass(frozen=True)
class _Job:
    """Everything one build run shares across its variants."""

    source: Path
    info: ModelInfo
    out: Path
    val: ImageSet
    calib: ImageSet | None
    config: BuildConfig
    host: HostInfo
    report: Reporter


def _load_model(model_dir: Path) -> tuple[Path, ModelInfo, str]:
    source = model_dir / "source" / "model.onnx"
    if not source.is_file():
        raise ModelFormatError(f"{source} does not exist; fetch or add the model first")
    info = read_model_info(source, model_dir.name)
    layout = detect_layout(info.outputs, info.num_classes, info.layout)
    return source, info, layout.name


def _keys(job: _Job, source_sha: str) -> dict[Precision, str]:
    keys = {}
    for precision in job.config.precisions:
        inputs = {"source": source_sha, "val": job.val.content_hash}
        inputs |= job.config.variant_inputs(precision)
        if precision is Precision.INT8 and job.calib is not None:
            inputs["calib"] = job.calib.content_hash
        keys[precision] = cache_key(inputs, job.host)
    return keys


def build_model(
    model_dir: Path, engines_dir: Path, config: BuildConfig, *, progress: bool = True
) -> Manifest:
    """Build (or reuse) every requested variant of the model in ``model_dir``.

    Writes ``engines_dir/<model>/manifest.json`` beside the artifacts and returns it. Raises
    ``ModelFormatError`` for a file that is not a detection ONNX and ``ImageSetError`` for an
    unusable image folder, before anything is recorded.
    """
    source, info, layout_name = _load_model(model_dir)
    val, calib = image_sets(
        config.val_dir or config.validation_images,
        (config.calib_dir or config.calibration_images)
        if Precision.INT8 in config.precisions
        else None,
    )
    out = engines_dir / info.name
    host = current_host(config.backend, config.providers)
    job = _Job(source, info, out, val, calib, config, host, Reporter(progress))
    with build_lock(out):
        return _build_locked(job, layout_name)


def _build_locked(job: _Job, layout_name: str) -> Manifest:
    config, out, info = job.config, job.out, job.info
    source_sha = sha256_file(job.source)
    # Variants of other backends and precisions (same source) stay as they are.
    manifest = Manifest(
        model=info.name,
        source_path=str(job.source),
        source_sha256=source_sha,
        layout=layout_name,
        input_size=info.input_size,
        class_names=list(info.class_names),
        variants=carried_over(Manifest.load(out), source_sha),
    )
    keys = _keys(job, source_sha)
    todo = []
    for p in config.precisions:
        reuse = (
            None
            if config.force
            else cached_variant(manifest, keys[p], out, p.value, config.backend)
        )
        if reuse is None:
            todo.append(p)
        else:
            job.report.say(f"{p.value}: cached, nothing to do")
    if todo:
        _build_todo(job, todo, keys, manifest)
    manifest.save(out)
    return manifest


def _loader(config: BuildConfig) -> EngineLoader:
    """How the build runs a variant ONNX. TensorRT-bound graphs are judged on CPU with
    fake-quant numerics (Q/DQ computed as written, as TensorRT does), never with ORT's CPU
    integer kernels, whose saturation would steer the INT8 search wrongly."""
    from engines.runtime.onnxruntime import OnnxRuntimeEngine

    tensorrt = config.backend == "tensorrt"
    providers = ("CPUExecutionProvider",) if tensorrt else config.providers
    session_config = FAKE_QUANT if tensorrt else None

    def load(path: Path, precision: Precision) -> Engine:
        return OnnxRuntimeEngine(
            path,
            precision,
            providers=providers,
            max_batch=config.max_batch,
            session_config=session_config,
        )

    return load


def _reference(job: _Job, load: EngineLoader) -> Reference:
    layout = detect_layout(job.info.outputs, job.info.num_classes, job.info.layout)
    pad = job.info.metadata.get("pad_value", "114")
    pad_value = int(pad) if pad.isdigit() else 114
    engine = load(job.source, Precision.FP32)
    try:
        with job.report.bar("reference fp32 on validation", len(job.val)) as tick:
            detections = detect_all(
                engine, job.val, layout, job.info.input_size, pad_value, CANDIDATE_CONF, tick
            )
    finally:
        engine.close()
    return Reference(job.val, detections, job.info, layout, pad_value, job.config.labels)


def _build_todo(
    job: _Job, todo: list[Precision], keys: dict[Precision, str], manifest: Manifest
) -> None:
    load = _loader(job.config)
    ref = _reference(job, load)
    backend = job.config.backend
    with staging(job.out, backend) as stage:
        for precision in todo:
            started = time.perf_counter()
            variant = Variant(
                precision=precision,
                backend=backend,
                device=job.host.device,
                status="building",
                tool_versions=job.host.tool_versions,
                cache_key=keys[precision],
            )
            files: list[tuple[Path, str]] = []
            try:
                files = _build_one(job, precision, ref, load, variant, stage)
            except (EngineError, OSError, ValueError, RuntimeError) as exc:
                # Recorded, never accepted: the next build retries only with --force or new inputs.
                variant.status = f"rejected: build failed: {exc}"
                variant.artifact = variant.artifact_sha256 = None
            variant.build_seconds = round(time.perf_counter() - started, 1)
            job.report.say(f"{precision.value}: {variant.status} ({variant.build_seconds}s)")
            if keeps_earlier(variant, find(manifest.variants, backend, precision), job.out):
                job.report.say(f"{precision.value}: the variant accepted earlier stays in use")
                continue
            for staged, name in files:
                publish(staged, job.out, name)
            put(manifest, variant)
            manifest.save(job.out)  # progress survives an interrupted build


def _make(
    job: _Job, precision: Precision, ref: Reference, load: EngineLoader, stage: Path
) -> Candidate:
    if precision is Precision.FP32:
        return make_fp32(job.source, stage)
    if precision is Precision.FP16:
        return make_fp16(job.source, stage)
    assert job.calib is not None  # image_sets loads it whenever INT8 is requested
    options = job.config.int8_options()
    ranges = job.out / f"calibration-{options.ranges_key}-{job.calib.content_hash[:12]}.json"
    pad, size = ref.pad_value, job.info.input_size
    calibration = CalibrationSet(job.calib, job.info.input_name, size, pad, ranges)
    budget = job.config.budgets.of(precision)
    search = Int8Search(
        calibration,
        options,
        budget,
        job.config.mixed_precision,
        job.config.max_fallbacks,
        quantize=job.config.int8_recipe(),
    )
    job.report.say(
        f"int8: {options.describe()}; {len(calibration)} images ({job.calib.description})"
    )
    with job.report.bar("int8 calibration", len(calibration)) as tick:
        calibration.on_feed = tick
        return make_int8(job.source, stage, ref, search, load, job.report.say)


def _build_one(
    job: _Job,
    precision: Precision,
    ref: Reference,
    load: EngineLoader,
    variant: Variant,
    stage: Path,
) -> list[tuple[Path, str]]:
    """Make, check and time one variant in ``stage``; fill ``variant`` (artifact, accuracy,
    status). Returns the staged files to publish as (path, final name), artifact first."""
    config = job.config
    budget = config.budgets.of(precision)
    candidate = _make(job, precision, ref, load, stage)
    engine = load(candidate.onnx_path, precision)
    try:
        if candidate.accuracy is None:
            with job.report.bar(f"{precision.value} validation", len(ref.images)) as tick:
                candidate.accuracy = measure(engine, ref, budget, tick)
        if config.timing and config.backend != "tensorrt":  # TensorRT times the plan
            sizes = batch_sizes(config.max_batch)
            with job.report.bar(f"{precision.value} timing", len(sizes)) as tick:
                variant.latency_ms = time_engine(engine, sizes, on_size=tick)
            variant.images_per_s = {
                b: round(b * 1000 / ms, 2) for b, ms in variant.latency_ms.items()
            }
    finally:
        engine.close()
    if precision is Precision.INT8 and job.calib is not None:
        variant.calibration = Calibration(
            method=config.calibration_method,
            image_count=len(job.calib),
            content_hash=job.calib.content_hash,
            source=job.calib.description,
        )
    variant.kept_float = candidate.kept_float or []
    if config.backend == "tensorrt":
        step = TensorRTStep(
            job.out,
            stage,
            config.max_batch,
            job.info.input_size,
            budget,
            config.timing,
            job.report,
        )
        files = finish_tensorrt(step, precision, candidate, ref, variant)
    else:
        variant.accuracy = candidate.accuracy
        score = candidate.accuracy.map50_95_agreement
        variant.status = (
            "accepted"
            if score >= budget
            else f"rejected: mAP50-95 agreement {score:.4f} < budget {budget}"
        )
        files = [(candidate.onnx_path, onnx_name(config.backend, precision))]
    staged, name = files[0]
    variant.artifact, variant.artifact_sha256 = name, sha256_file(staged)
    return files
