"""``detect-serve build``: ONNX model -> FP32 / FP16 / INT8 variants, checked, timed, recorded.

A chain of small steps: load the model -> make each variant -> validate against FP32 on real
images -> compile (the backend's artifact) -> validate again if compiling changes the numerics ->
time -> record in the manifest. Builds are cached per variant by a key over everything that
changes the result (source, calibration and validation data, options, tool versions, device):
same key and intact artifact -> no work.

Each backend's builds live side by side in the model folder (``engines.build.merge``): a build
works in a staging folder, publishes an artifact only once it is judged, and replaces only the
record of its own (backend, precision); a rejected rebuild never displaces an accepted variant.
Where the backend cannot compile (TensorRT without a GPU), the proven ONNX is recorded pending.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import Accuracy, Calibration, Timings, VariantRecord
from engines.build.cache import cache_key, cached_variant
from engines.build.int8.calibration import CalibrationSet, ImageSet, image_sets
from engines.build.int8.maker import Int8Search, make_int8
from engines.build.int8.quantize import CalibrationName, Int8Options
from engines.build.makers import make_fp16, make_fp32
from engines.build.merge import build_lock, carried_over, guarded
from engines.build.report import Reporter
from engines.build.servable import check_servable, float32_source
from engines.build.staging import staging, sweep
from engines.build.timing import batch_sizes, time_engine
from engines.build.validation import EngineLoader, Reference, judge, make_reference, measure
from engines.errors import CompilerUnavailableError, EngineError, ModelFormatError
from engines.model.pipeline import ModelPipeline, load_model_pipeline
from engines.precision import Precision
from engines.runtime.backends import (
    DEFAULT_BACKEND,
    ONNX_BACKEND,
    check_backend_name,
    current_host,
    get_backend,
)
from engines.runtime.base import Engine, EngineOptions, Int8Recipe
from engines.runtime.host import HostInfo
from engines.sources.registry import sha256_file
from engines.sources.repository import SOURCE_ONNX, model_fallback

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
    backend: str = DEFAULT_BACKEND
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
    input_size: tuple[int, int] | None = None  # (height, width): overrides model.yaml/metadata

    def __post_init__(self) -> None:
        if not self.precisions:
            raise ValueError("no precision requested")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        check_backend_name(self.backend)
        if self.labels is not None and self.val_dir is None:
            raise ValueError("labels need val_dir: the labelled images themselves")
        if self.input_size is not None and min(self.input_size) < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")

    def int8_recipe(self) -> Int8Recipe:
        """The backend row's INT8 recipe: each backend gets the INT8 graph its kernels want."""
        return get_backend(self.backend).int8

    def int8_options(self) -> Int8Options:
        """The backend's INT8 recipe with this build's method; whole-graph mode quantizes
        every op."""
        return Int8Options(
            self.calibration_method,
            symmetric_activations=self.int8_recipe().symmetric_activations,
            op_types=("Conv",) if self.mixed_precision else None,
        )

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
                "recipe": self.int8_recipe().name,
                "mixed": self.mixed_precision,
                "fallbacks": self.max_fallbacks,
            }
        return inputs


@dataclass(frozen=True)
class _Job:
    """Everything one build run shares across its variants."""

    source: Path
    float_source: Path  # the source, or its exact float32 upcast for a float16 model
    pipeline: ModelPipeline
    out: Path
    val: ImageSet
    calib: ImageSet | None
    config: BuildConfig
    host: HostInfo
    report: Reporter


def _load_model(model_dir: Path, input_size: tuple[int, int] | None) -> tuple[Path, ModelPipeline]:
    source = model_dir / SOURCE_ONNX
    if not source.is_file():
        raise ModelFormatError(f"{source} does not exist; fetch or add the model first")
    pipeline = load_model_pipeline(
        source, model_dir.name, fallback=model_fallback(model_dir), input_size=input_size
    )
    check_servable(pipeline.info)
    return source, pipeline


def _keys(job: _Job, source_sha: str) -> dict[Precision, str]:
    keys = {}
    for precision in job.config.precisions:
        inputs: dict[str, object] = {"source": source_sha, "val": job.val.content_hash}
        inputs["input_size"] = list(job.pipeline.info.input_size)
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
    source, pipeline = _load_model(model_dir, config.input_size)
    info = pipeline.info
    val, calib = image_sets(
        config.val_dir or config.validation_images,
        (config.calib_dir or config.calibration_images)
        if Precision.INT8 in config.precisions
        else None,
    )
    out = engines_dir / info.name
    host = current_host(config.backend, config.providers)
    job = _Job(source, source, pipeline, out, val, calib, config, host, Reporter(progress))
    with build_lock(out):
        return _build_locked(job)


def _build_locked(job: _Job) -> Manifest:
    config, out, info = job.config, job.out, job.pipeline.info
    sweep(out)  # leftovers of dead builds go first; the float32 upcast is made after
    job = replace(job, float_source=float32_source(job.source, out))
    source_sha = sha256_file(job.source)
    manifest = Manifest(
        model=info.name,
        source_path=str(job.source),
        source_sha256=source_sha,
        layout=job.pipeline.layout.name,
        input_size=info.input_size,
        class_names=list(info.class_names),
        # Variants of other backends and precisions (same source) stay as they are.
        variants=carried_over(Manifest.load(out), source_sha),
    )
    keys = _keys(job, source_sha)
    todo = []
    for p in config.precisions:
        if config.force or cached_variant(manifest, keys[p], out, p, config.backend) is None:
            todo.append(p)
        else:
            job.report.say(f"{p.value}: cached, nothing to do")
    if todo:
        _build_todo(job, todo, keys, manifest)
    manifest.save(out)
    return manifest


def _options(config: BuildConfig, input_size: tuple[int, int]) -> EngineOptions:
    return EngineOptions(
        max_batch=config.max_batch, providers=config.providers, input_size=input_size
    )


def _loader(config: BuildConfig, input_size: tuple[int, int]) -> EngineLoader:
    """How the build runs a variant ONNX: on the ONNX backend, under the target backend's
    accuracy config. TensorRT-bound graphs are judged on CPU with fake-quant numerics (Q/DQ
    computed as written, as TensorRT does), never with ORT's CPU integer kernels, whose
    saturation would steer the INT8 search wrongly."""
    session_config = get_backend(config.backend).accuracy_session_config
    options = EngineOptions(
        max_batch=config.max_batch,
        providers=("CPUExecutionProvider",) if session_config else config.providers,
        session_config=session_config,
        input_size=input_size,
    )

    def load(path: Path, precision: Precision) -> Engine:
        return ONNX_BACKEND.open(path, precision, options)

    return load


def _reference(job: _Job, load: EngineLoader) -> Reference:
    with job.report.bar("reference fp32 on validation", len(job.val)) as tick:
        return make_reference(
            job.float_source, job.pipeline, job.val, load, job.config.labels, tick=tick
        )


def _build_todo(
    job: _Job, todo: list[Precision], keys: dict[Precision, str], manifest: Manifest
) -> None:
    load = _loader(job.config, job.pipeline.info.input_size)
    ref = _reference(job, load)
    backend = job.config.backend
    for precision in todo:
        started = time.perf_counter()
        draft = VariantRecord(
            precision=precision,
            backend=backend,
            device=job.host.device,
            reason="build did not finish",
            tool_versions=job.host.tool_versions,
            cache_key=keys[precision],
        )
        # An accepted variant whose artifact is intact gives way only to an accepted one.
        keep = guarded(manifest.variant(precision, backend), job.out)
        try:
            # Built aside and moved in only when finished; anything else leaves no files.
            with staging(job.out) as stage:
                record = _build_one(replace(job, out=stage.dir), precision, ref, load, draft)
                if record.accepted or not keep:
                    stage.commit()
        except (EngineError, OSError, ValueError, RuntimeError) as exc:
            # Recorded, never accepted: the next build retries only with --force or new inputs.
            record = draft.reject(f"build failed: {exc}")
        record = record.model_copy(
            update={"build_seconds": round(time.perf_counter() - started, 1)}
        )
        shown = record.status if record.accepted else f"{record.status}: {record.reason}"
        job.report.say(f"{precision.value}: {shown} ({record.build_seconds}s)")
        if keep and not record.accepted:
            job.report.say(f"{precision.value}: the variant accepted earlier stays in use")
            continue
        manifest.with_variant(record)
        manifest.save(job.out)  # progress survives an interrupted build; nothing unproven accepted


def _make(
    job: _Job, precision: Precision, ref: Reference, load: EngineLoader, draft: VariantRecord
) -> VariantRecord:
    if precision is Precision.FP32:
        return make_fp32(job.float_source, job.out, draft)
    if precision is Precision.FP16:
        if job.float_source != job.source:  # a half export: its own file is the FP16 variant
            shutil.copyfile(job.source, job.out / "fp16.onnx")
            return draft.model_copy(update={"artifact": "fp16.onnx"})
        return make_fp16(job.source, job.out, draft)
    assert job.calib is not None  # image_sets loads it whenever INT8 is requested
    options = job.config.int8_options()
    info = job.pipeline.info
    size, pad = info.input_size, info.pad_value
    key = f"{options.ranges_key}-{size[0]}x{size[1]}-{job.calib.content_hash[:12]}"
    ranges = job.out / f"calibration-{key}.json"
    # A static-batch model takes exactly its own batch in every feed.
    static_batch = info.inputs[0].shape[0] or 1
    calibration = CalibrationSet(
        job.calib, info.input_name, size, pad, ranges, batch=static_batch, resize=info.resize
    )
    budget = job.config.budgets.of(precision)
    search = Int8Search(
        calibration,
        options,
        budget,
        job.config.mixed_precision,
        job.config.max_fallbacks,
        quantize=job.config.int8_recipe().quantize,
    )
    job.report.say(
        f"int8: {options.describe()}; {len(calibration)} images ({job.calib.description})"
    )
    with job.report.bar("int8 calibration", len(calibration)) as tick:
        calibration.on_feed = tick
        made = make_int8(job.float_source, job.out, ref, search, load, job.report.say, draft)
    return made.model_copy(
        update={
            "calibration": Calibration(
                method=job.config.calibration_method,
                image_count=len(job.calib),
                content_hash=job.calib.content_hash,
                source=job.calib.description,
            )
        }
    )


def _build_one(
    job: _Job, precision: Precision, ref: Reference, load: EngineLoader, draft: VariantRecord
) -> VariantRecord:
    """make -> validate the graph -> compile -> (validate the artifact) -> time -> judge, all in
    ``job.out`` (the variant's staging folder)."""
    config = job.config
    budget = config.budgets.of(precision)
    backend = get_backend(config.backend)
    made = _make(job, precision, ref, load, draft)
    assert made.artifact is not None  # every maker writes its graph
    # The backend's own name for its graph, so several backends' builds live side by side.
    graph = (job.out / made.artifact).replace(job.out / f"{precision.value}{backend.graph_suffix}")
    # The graph is judged first, as the backend computes it (``load``): nothing that misses its
    # budget is compiled, and a graph that cannot be compiled here is known to be good.
    record = judge(
        made.model_copy(update={"artifact": graph.name, "artifact_sha256": sha256_file(graph)}),
        made.accuracy or _validate(job, graph, precision, load, ref, budget),
    )
    if not record.accepted:
        return record
    try:
        artifact = backend.compile(graph, job.out, config.max_batch, job.pipeline.info.input_size)
    except CompilerUnavailableError as exc:
        score = record.agreement
        return record.defer(f"{record.artifact} passed here (agreement {score:.4f}); {exc}")
    engine = backend.open(artifact, precision, _options(config, job.pipeline.info.input_size))
    try:
        accuracy = record.accuracy
        if backend.revalidate_compiled:  # its own kernels: the artifact is judged again
            accuracy = _measure(job, engine, f"{precision.value} {artifact.name}", ref, budget)
            job.report.say(
                f"{precision.value}: {artifact.name} agreement {accuracy.map50_95_agreement:.4f} "
                f"(its ONNX: {record.agreement:.4f})"
            )
        timings = None
        if config.timing:
            sizes = batch_sizes(min(config.max_batch, engine.max_batch))
            size = job.pipeline.info.input_size
            with job.report.bar(f"{precision.value} timing", len(sizes)) as tick:
                latency = time_engine(engine, sizes, input_size=size, on_size=tick)
                timings = Timings(latency_ms=latency)
    finally:
        engine.close()
    assert accuracy is not None  # judged above
    update = {"artifact": artifact.name, "artifact_sha256": sha256_file(artifact)}
    return judge(record.model_copy(update={**update, "timings": timings}), accuracy)


def _validate(
    job: _Job, graph: Path, precision: Precision, load: EngineLoader, ref: Reference, budget: float
) -> Accuracy:
    engine = load(graph, precision)
    try:
        return _measure(job, engine, precision.value, ref, budget)
    finally:
        engine.close()


def _measure(job: _Job, engine: Engine, what: str, ref: Reference, budget: float) -> Accuracy:
    with job.report.bar(f"{what} validation", len(ref.images)) as tick:
        return measure(engine, ref, budget, tick)
