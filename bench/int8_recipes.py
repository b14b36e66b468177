"""Measure CPU INT8 recipes side by side: ORT session speed (batch 1 and 8) and agreement.

``python -m bench.int8_recipes [--runs N] [--profile]`` quantizes the default model's source
with each recipe below (same calibration images, same float-kept decode head), then in one run:
times every variant's ONNX Runtime session alone (median ms of ``--runs`` back-to-back calls at
batch 1 and 8, FP32 re-timed between recipes so drift from a shared machine shows), and measures
its mAP50-95 agreement with FP32 on the validation photos, exactly as the build does. With
``--profile``, also writes which kernels each recipe runs in float (ORT's profiler) to the
results folder. Prints one table and writes ``bench-results/int8-recipes.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from engines.build.int8.calibration import CalibrationSet, image_sets
from engines.build.int8.graph import decode_head
from engines.build.validation import make_reference, measure
from engines.model.pipeline import load_model_pipeline
from engines.precision import Precision
from engines.runtime.onnxruntime import OnnxRuntimeEngine

MODEL = Path("models/yolov3-tiny-coco/source/model.onnx")
INTEGER_OPS = ("Conv", "LeakyRelu", "MaxPool", "Resize", "Concat")
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class Recipe:
    name: str
    ops: tuple[str, ...] = INTEGER_OPS
    method: str = "minmax"
    fmt: str = "qdq"  # or "qoperator"
    per_channel: bool = True
    symmetric_activations: bool = False


RECIPES = (
    Recipe("conv-only qdq (previous default)", ops=("Conv",)),
    Recipe("integer chain qdq u8s8 minmax"),
    Recipe("integer chain qdq u8s8 entropy", method="entropy"),
    Recipe("integer chain qdq u8s8 percentile", method="percentile"),
    Recipe("integer chain qoperator u8s8 minmax", fmt="qoperator"),
    Recipe("integer chain qdq u8s8 per-tensor", per_channel=False),
    Recipe("integer chain qdq s8s8 minmax", symmetric_activations=True),
)


def quantize(recipe: Recipe, calib: CalibrationSet, keep: list[str], out: Path) -> None:
    calib.rewind()
    activation = QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8
    quantize_static(
        model_input=MODEL,
        model_output=out,
        calibration_data_reader=calib,
        quant_format=QuantFormat.QDQ if recipe.fmt == "qdq" else QuantFormat.QOperator,
        per_channel=recipe.per_channel,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(recipe.ops),
        nodes_to_exclude=keep,
        calibrate_method=METHODS[recipe.method],
        extra_options={
            "ActivationSymmetric": recipe.symmetric_activations,
            "WeightSymmetric": True,
        },
    )


def time_session(path: Path, runs: int) -> dict[int, float]:
    """Median ms per call at batch 1 and 8, one ORT session, back-to-back after warm-up."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    result = {}
    for batch in (1, 8):
        feed = {name: rng.random((batch, 3, 416, 416), dtype=np.float32)}
        session.run(None, feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000)
        result[batch] = round(statistics.median(times), 2)
    return result


def float_kernels(path: Path, out: Path) -> dict[str, float]:
    """Share of run time per (op type, float or integer) from ORT's profiler, batch 8."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(out)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: np.random.default_rng(0).random((8, 3, 416, 416), dtype=np.float32)}
    for _ in range(3):
        session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    totals: Counter[str] = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values()) or 1
    return {op: round(100 * us / whole, 1) for op, us in totals.most_common()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline = load_model_pipeline(MODEL, "yolov3-tiny-coco")
    val, calib_images = image_sets(24, 48)
    assert calib_images is not None
    load = lambda p, prec: OnnxRuntimeEngine(p, prec)  # noqa: E731
    ref = make_reference(MODEL, pipeline, val, load)
    keep = decode_head(onnx.load(str(MODEL)))
    rows = [{"recipe": "fp32", "ms": time_session(MODEL, args.runs), "agreement": 1.0}]
    if args.profile:
        rows[0]["kernels"] = float_kernels(MODEL, args.out / "profile-fp32")
    with tempfile.TemporaryDirectory() as tmp:
        for k, recipe in enumerate(RECIPES):
            info = pipeline.info
            cache = Path(tmp) / f"ranges-{k}.json"
            calib = CalibrationSet(calib_images, info.input_name, info.input_size, 114, cache)
            target = Path(tmp) / f"int8-{k}.onnx"
            quantize(recipe, calib, keep, target)
            engine = OnnxRuntimeEngine(target, Precision.INT8)
            agreement = measure(engine, ref, 0.0).map50_95_agreement
            engine.close()
            row = {
                "recipe": recipe.name,
                **asdict(recipe),
                "ms": time_session(target, args.runs),
                "fp32_ms_now": time_session(MODEL, args.runs),
                "agreement": round(agreement, 4),
            }
            if args.profile:
                row["kernels"] = float_kernels(target, args.out / f"profile-{k}")
            rows.append(row)
            _print(row)
    (args.out / "int8-recipes.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows[0]))
    return 0


def _print(row: dict[str, object]) -> None:
    ms, fp32 = row["ms"], row["fp32_ms_now"]
    assert isinstance(ms, dict) and isinstance(fp32, dict)
    speed = {b: round(fp32[b] / ms[b], 2) for b in ms}
    print(
        f"{row['recipe']:<40} b1 {ms[1]:7.1f} ms  b8 {ms[8]:7.1f} ms  "
        f"x FP32 (same moment) {speed}  agreement {row['agreement']}",
        flush=True,
    )
    if "kernels" in row:
        print("   kernels % of time:", row["kernels"], flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
