"""The backend table: a new backend is one class and one row, and everything else follows.

``EchoBackend`` below is the whole of a new backend: it runs the variant ONNX on ONNX Runtime
under its own name and INT8 recipe. Registered as one row, settings, the CLI, the build config,
the host description and the server's variant loading all accept it with no other change.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import VariantRecord
from engines.artifacts.variants import discover_variants
from engines.build.builder import BuildConfig
from engines.errors import EngineLoadError
from engines.precision import Precision
from engines.runtime import backends
from engines.runtime.base import Engine, EngineOptions, Int8Recipe
from engines.runtime.onnxruntime import OnnxRuntimeEngine
from engines.sources.registry import sha256_file
from engines.sources.repository import SOURCE_ONNX
from service.cli_build import add_build_command
from service.config import Settings
from tests.engines.build_fixtures import SIZE, tiny_detector

NAME = "echo"


class EchoBackend:
    name = NAME
    int8 = Int8Recipe(name="echo-int8", symmetric_activations=True)
    graph_suffix = ".echo.onnx"
    accuracy_session_config: Mapping[str, str] = MappingProxyType({})  # judged as served
    revalidate_compiled = False

    def open(self, artifact: Path, precision: Precision, options: EngineOptions) -> Engine:
        return OnnxRuntimeEngine(artifact, precision, max_batch=options.max_batch)

    def compile(
        self, onnx_path: Path, cache_dir: Path, max_batch: int, input_size: tuple[int, int]
    ) -> Path:
        return onnx_path

    def tool_versions(self) -> dict[str, str]:
        return {"echo": "1.0"}

    def device(self, providers: tuple[str, ...]) -> str:
        return "echo-device"


@pytest.fixture()
def echo() -> Iterator[EchoBackend]:
    backend = EchoBackend()
    backends.register_backend(backend)  # the one row
    yield backend
    del backends.BACKENDS[NAME]


def test_every_row_is_a_backend_named_by_its_key() -> None:
    assert set(backends.backend_names()) >= {"onnxruntime", "tensorrt"}
    for name, row in backends.BACKENDS.items():
        assert row.name == name
        assert isinstance(row.int8, Int8Recipe)
    trt, ort = backends.get_backend("tensorrt"), backends.get_backend("onnxruntime")
    assert trt.int8.symmetric_activations and trt.revalidate_compiled
    assert not ort.int8.symmetric_activations and not ort.revalidate_compiled
    # Each row brings its own INT8 recipe, artifact names and accuracy gate numerics.
    assert trt.int8.quantize is not ort.int8.quantize and trt.int8.name != ort.int8.name
    assert (ort.graph_suffix, trt.graph_suffix) == (".onnx", ".trt.onnx")
    assert dict(trt.accuracy_session_config) == {"session.disable_quant_qdq": "1"}
    assert dict(ort.accuracy_session_config) == {}


def test_unknown_backend_is_refused_everywhere_with_the_known_names() -> None:
    with pytest.raises(ValidationError, match="unknown backend 'nope'; known: onnxruntime"):
        Settings(backend="nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        BuildConfig(backend="nope")
    with pytest.raises(EngineLoadError, match="no engine backend named 'nope'"):
        backends.current_host("nope")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_build_command(parser.add_subparsers(dest="command"))
    return parser


def test_a_registered_backend_is_accepted_by_settings_cli_and_build(echo: EchoBackend) -> None:
    assert Settings(backend=NAME).backend == NAME
    args = build_parser().parse_args(["build", "m", "--backend", NAME])
    assert args.backend == NAME
    config = BuildConfig(backend=NAME)
    assert config.int8_options().symmetric_activations  # the backend's own INT8 recipe
    assert config.int8_recipe() is echo.int8
    assert config.variant_inputs(Precision.INT8)["recipe"] == "echo-int8"  # in the cache key
    host = backends.current_host(NAME)
    assert (host.backend, host.device, host.tool_versions) == (
        NAME,
        "echo-device",
        {"echo": "1.0"},
    )
    with pytest.raises(SystemExit):  # without its row, the CLI has no such choice
        del backends.BACKENDS[NAME]
        try:
            build_parser().parse_args(["build", "m", "--backend", NAME])
        finally:
            backends.register_backend(echo)


def test_a_registered_backend_serves_its_own_variants(echo: EchoBackend, tmp_path: Path) -> None:
    models, engines = tmp_path / "models", tmp_path / "engines"
    (models / "tiny" / SOURCE_ONNX).parent.mkdir(parents=True)
    onnx.save(tiny_detector(), str(models / "tiny" / SOURCE_ONNX))
    folder = engines / "tiny"
    folder.mkdir(parents=True)
    onnx.save(tiny_detector(), str(folder / "fp32.onnx"))
    host = backends.current_host(NAME)
    record = VariantRecord(
        precision=Precision.FP32,
        backend=NAME,
        device=host.device,
        artifact="fp32.onnx",
        artifact_sha256=sha256_file(folder / "fp32.onnx"),
        status="accepted",
        tool_versions=host.tool_versions,
    )
    Manifest(
        model="tiny",
        source_path="s",
        source_sha256="s",
        layout="yolov5",
        input_size=(SIZE, SIZE),
        class_names=["a", "b"],
        variants=[record],
    ).save(folder)
    found = discover_variants(models, engines, "tiny", NAME)
    assert [v.record for v in found.servable] == [record] and found.refused == {}
    (servable,) = found.servable
    engine = backends.open_engine(servable.path, Precision.FP32, NAME, EngineOptions(max_batch=2))
    try:
        out = engine.infer(np.zeros((2, 3, SIZE, SIZE), np.float32))
        assert out["output0"].shape[0] == 2
    finally:
        engine.close()
    # The same build is refused by a server running another backend, with the reason.
    refused = discover_variants(models, engines, "tiny", "onnxruntime").refused
    assert "built for backend echo, server runs onnxruntime" in refused[Precision.FP32]
