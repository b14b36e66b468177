"""TensorRT backend: pure-Python parts here; plan build and execution on a GPU (marked `gpu`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.errors import EngineLoadError
from engines.precision import Precision
from engines.runtime.tensorrt import split_ultralytics_engine
from tests.conftest import MODELS_DIR


def test_ultralytics_engine_header_is_split_off() -> None:
    meta = {"names": {"0": "person"}, "imgsz": [640, 640], "stride": 32}
    text = json.dumps(meta).encode()
    plan = b"\x00ftrt-plan-bytes" * 10
    found, rest = split_ultralytics_engine(len(text).to_bytes(4, "little") + text + plan)
    assert found == meta and rest == plan


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ftrt",
        b"\xff\xff\xff\x7f" + b"x" * 20,
        (5).to_bytes(4, "little") + b"notjs" + b"p",
        (2).to_bytes(4, "little") + b"[]" + b"plan",
    ],
    ids=["empty", "short", "huge-length", "not-json", "json-not-object"],
)
def test_plain_plans_are_left_alone(data: bytes) -> None:
    assert split_ultralytics_engine(data) == (None, data)


def test_missing_tensorrt_is_a_load_error(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here; the missing-library path cannot be shown")
    from engines.build.tensorrt_plan import build_plan
    from engines.runtime.tensorrt import TensorRTEngine

    with pytest.raises(EngineLoadError, match="TensorRT is not installed"):
        TensorRTEngine(tmp_path / "x.plan", Precision.FP32, max_batch=4)
    with pytest.raises(EngineLoadError, match="TensorRT is not installed"):
        build_plan(
            tmp_path / "x.onnx",
            tmp_path / "x.plan",
            opt_batch=2,
            max_batch=4,
            workspace_bytes=1 << 28,
            timing_cache_path=None,
        )


def small_conv_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["output0"]),
        ],
        "small",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 8, 32, 32])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.gpu
def test_plan_matches_onnxruntime_at_batch_1_and_max(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from engines.build.tensorrt_plan import build_plan
    from engines.runtime.tensorrt import TensorRTEngine

    source = small_conv_model(tmp_path / "small.onnx")
    info = build_plan(
        source,
        tmp_path / "small.plan",
        opt_batch=2,
        max_batch=4,
        workspace_bytes=1 << 28,
        timing_cache_path=tmp_path / "timing.cache",
    )
    assert (tmp_path / "timing.cache").is_file() and info.sha256
    engine = TensorRTEngine(tmp_path / "small.plan", Precision.FP32, max_batch=4)
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    try:
        for size in (1, 4):
            batch = rng.uniform(0, 1, (size, 3, 32, 32)).astype(np.float32)
            got = engine.infer(batch)["output0"]
            np.testing.assert_allclose(
                got, session.run(None, {"images": batch})[0], rtol=1e-2, atol=1e-2
            )
        batches = [rng.uniform(0, 1, (2, 3, 32, 32)).astype(np.float32) for _ in range(8)]
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda b: engine.infer(b)["output0"], batches))
        for b, out in zip(batches, outs, strict=True):
            np.testing.assert_allclose(
                out, session.run(None, {"images": b})[0], rtol=1e-2, atol=1e-2
            )
    finally:
        engine.close()


def test_profiles_fill_symbolic_height_and_width_and_check_the_batch_range() -> None:
    from engines.build.tensorrt_plan import profile_shapes

    low, opt, high = profile_shapes(
        (-1, 3, -1, -1), min_batch=1, opt_batch=4, max_batch=8, size=(416, 320)
    )
    assert (low, opt, high) == ((1, 3, 416, 320), (4, 3, 416, 320), (8, 3, 416, 320))
    assert profile_shapes((-1, 3, 32, 32), min_batch=1, opt_batch=1, max_batch=2, size=(9, 9))[
        2
    ] == (2, 3, 32, 32)  # fixed H/W are kept
    with pytest.raises(ValueError, match="batch range"):
        profile_shapes((-1, 3, 32, 32), min_batch=2, opt_batch=1, max_batch=4, size=(32, 32))
    with pytest.raises(EngineLoadError, match="symbolic"):
        profile_shapes((-1, -1, 32, 32), min_batch=1, opt_batch=1, max_batch=4, size=(32, 32))


def test_timing_cache_is_keyed_by_gpu_model_and_tensorrt_version() -> None:
    from engines.build.tensorrt_plan import timing_cache_name

    l4 = timing_cache_name("NVIDIA L4 (sm_89)", "11.4.0.106")
    assert l4 == "timing-NVIDIA-L4-sm-89-trt11.4.0.106.cache"
    assert l4 != timing_cache_name("NVIDIA A10G (sm_86)", "11.4.0.106")
    assert l4 != timing_cache_name("NVIDIA L4 (sm_89)", "10.16.1.11")


@pytest.mark.gpu
def test_tensorrt_build_accepts_plans_checked_on_the_gpu(
    default_model_source: Path, tmp_path: Path
) -> None:
    """On a GPU host the build compiles the TensorRT-ready ONNX and re-checks each plan."""
    from engines.artifacts.manifest import Manifest
    from engines.build.builder import BuildConfig, build_model
    from tests.conftest import DEFAULT_MODEL

    model_dir = MODELS_DIR / DEFAULT_MODEL
    config = BuildConfig(backend="tensorrt", max_batch=8)
    build_model(model_dir, tmp_path, config, progress=False)
    manifest = Manifest.load(tmp_path / model_dir.name)
    assert manifest is not None
    by = {v.precision.value: v for v in manifest.variants if v.backend == "tensorrt"}
    for precision in ("fp32", "int8"):
        variant = by[precision]
        assert variant.accepted, f"{variant.status}: {variant.reason}"
        assert variant.artifact == f"{precision}.plan" and variant.latency_ms
        assert variant.accuracy is not None and variant.accuracy.map50_95_agreement >= 0.95
