"""The TensorRT end of a build: the TensorRT-ready ONNX is proven on CPU first, then compiled.

1. Anywhere: the variant ONNX (``int8.trt.onnx``: the TensorRT INT8 recipe's Q/DQ + FP16 graph)
   is checked against FP32 with ONNX Runtime on CPU, INT8 with fake-quant numerics (what
   TensorRT computes). A graph that misses its budget here is rejected before any compile.
2. With TensorRT installed (a GPU host): the plan is compiled and checked again against FP32,
   on the GPU, before it is accepted; its timings are the plan's.
3. Without TensorRT: the proven ONNX is recorded as ``pending``, with a status that says the
   plan is compiled and checked on the GPU host at first start (``serve --prepare``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from engines.artifacts.manifest import Accuracy, Variant
from engines.build.merge import onnx_name, plan_name
from engines.build.report import Reporter
from engines.build.steps import Candidate, Reference, measure
from engines.build.timing import batch_sizes, time_engine
from engines.precision import Precision

PENDING = "pending"


def tensorrt_available() -> bool:
    """TensorRT's Python package is importable here (found without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


@dataclass(frozen=True)
class TensorRTStep:
    out_dir: Path
    stage: Path
    max_batch: int
    input_size: tuple[int, int]  # (height, width): fills symbolic H/W in the plan's profiles
    budget: float
    timing: bool
    report: Reporter


def pending_status(score: float) -> str:
    return (
        f"{PENDING}: TensorRT-ready ONNX checked on CPU (fake-quant agreement {score:.4f}); "
        "TensorRT is not installed here: the plan is compiled and checked against FP32 on the "
        "GPU host at first start (detect-serve serve --prepare)"
    )


def finish_tensorrt(
    step: TensorRTStep,
    precision: Precision,
    candidate: Candidate,
    ref: Reference,
    variant: Variant,
) -> list[tuple[Path, str]]:
    """Judge (and, with TensorRT, compile and re-judge) a TensorRT variant; fill ``variant``.

    Returns the staged files to publish as (staged path, final name), artifact first.
    """
    assert candidate.accuracy is not None  # the builder measured the ONNX on CPU
    onnx_score = candidate.accuracy.map50_95_agreement
    files = [(candidate.onnx_path, onnx_name("tensorrt", precision))]
    variant.accuracy = candidate.accuracy
    if onnx_score < step.budget:
        variant.status = (
            f"rejected: TensorRT-ready ONNX agreement {onnx_score:.4f} < budget {step.budget} "
            "(fake-quant on CPU); not compiled"
        )
        return files
    if not tensorrt_available():
        variant.status = pending_status(onnx_score)
        return files
    plan = _compile(step, candidate.onnx_path, precision)
    variant.accuracy = _check_plan(step, plan, precision, ref, variant)
    score = variant.accuracy.map50_95_agreement
    step.report.say(
        f"{precision.value}: plan agreement {score:.4f} on the GPU (ONNX on CPU: {onnx_score:.4f})"
    )
    variant.status = (
        "accepted"
        if score >= step.budget
        else f"rejected: plan agreement {score:.4f} < budget {step.budget} on the GPU"
    )
    return [(plan, plan_name("tensorrt", precision)), *files]


def _compile(step: TensorRTStep, onnx_path: Path, precision: Precision) -> Path:
    from engines.build.tensorrt_plan import build_plan, timing_cache_path

    plan = step.stage / plan_name("tensorrt", precision)
    with step.report.bar(f"{precision.value} TensorRT compile", 1) as tick:
        build_plan(
            onnx_path,
            plan,
            opt_batch=max(1, step.max_batch // 2),
            max_batch=step.max_batch,
            workspace_bytes=2 << 30,
            timing_cache_path=timing_cache_path(step.out_dir),
            input_size=step.input_size,
        )
        tick(1)
    return plan


def _check_plan(
    step: TensorRTStep, plan: Path, precision: Precision, ref: Reference, variant: Variant
) -> Accuracy:
    from engines.runtime.tensorrt import TensorRTEngine

    engine = TensorRTEngine(plan, precision, max_batch=step.max_batch)
    try:
        with step.report.bar(f"{precision.value} plan validation", len(ref.images)) as tick:
            accuracy = measure(engine, ref, step.budget, tick)
        if step.timing:
            sizes = batch_sizes(engine.max_batch)
            with step.report.bar(f"{precision.value} plan timing", len(sizes)) as tick:
                variant.latency_ms = time_engine(engine, sizes, on_size=tick)
            variant.images_per_s = {
                b: round(b * 1000 / ms, 2) for b, ms in variant.latency_ms.items()
            }
    finally:
        engine.close()
    return accuracy
