"""Every TensorRT and cuda-python attribute the code uses exists in the real bindings.

TensorRT cannot be installed where these tests run, so its code is checked against the names
the real binding wheels expose: ``tests/data/trt_symbols.json``, written by
``scripts/extract_symbols.py`` from ``tensorrt-cu12/13-bindings`` (TensorRT 10.x and 11.x) and
``cuda-bindings`` 12.x/13.x. The code is parsed with ``ast``; each attribute read on a module
(``trt.X``, ``cudart.X``), on an enum or class (``trt.X.Y``) or on an object whose TensorRT class
the variable name tells (``context.set_input_shape``) is looked up in both majors.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = json.loads((REPO / "tests" / "data" / "trt_symbols.json").read_text())
FILES = ("engines/build/tensorrt_plan.py", "engines/runtime/tensorrt.py")
# The TensorRT class of each receiver name the two files use for TensorRT objects.
TRT_RECEIVERS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "tensor": "ITensor",
    "_runtime": "Runtime",
    "_engine": "ICudaEngine",
    "context": "IExecutionContext",
    "cache": "ITimingCache",
}
# Calls whose result is a TensorRT object: ``config.get_timing_cache().serialize()``.
TRT_RETURNS = {"get_timing_cache": "ITimingCache", "create_timing_cache": "ITimingCache"}
CUDA_RECEIVERS = {"props": "cudaDeviceProp"}
MODULES = {"trt": "tensorrt", "cudart": "cudart", "_cudart": "cudart"}


def _receiver(node: ast.expr) -> str | None:
    """The last name of ``a.b.c`` / ``self._x`` / ``slot.context``; for a call, what it calls."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _receiver(node.func)
    return None


def uses(path: Path) -> Iterator[tuple[str, str, str, int]]:
    """(api, owner, member, line) for each TensorRT/cudart attribute read in ``path``; owner ""
    is the module itself."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        # trt.X / cudart.X / self._cudart.X
        name = _receiver(value) if not isinstance(value, ast.Call) else None
        if name in MODULES and not (isinstance(value, ast.Attribute) and name == "trt"):
            yield MODULES[name], "", node.attr, node.lineno
            continue
        # trt.X.Y / cudart.X.Y: Y on class or enum X
        if isinstance(value, ast.Attribute) and _receiver(value.value) in MODULES:
            api = MODULES[str(_receiver(value.value))]
            yield api, value.attr, node.attr, node.lineno
            continue
        if isinstance(value, ast.Call) and _receiver(value) in TRT_RETURNS:
            yield "tensorrt", TRT_RETURNS[str(_receiver(value))], node.attr, node.lineno
        elif name in TRT_RECEIVERS:
            yield "tensorrt", TRT_RECEIVERS[name], node.attr, node.lineno
        elif name in CUDA_RECEIVERS:
            yield "cudart", CUDA_RECEIVERS[name], node.attr, node.lineno


ALL_USES = sorted({u for file in FILES for u in uses(REPO / file)})
MAJORS = {"tensorrt": ("10", "11"), "cudart": ("12", "13")}


def _exists(api: str, major: str, owner: str, member: str) -> bool:
    table = SYMBOLS[api][major]
    if not owner:
        return member in table["module"] or member == "__version__"
    return member in table["classes"][owner]


@pytest.mark.parametrize(
    ("api", "owner", "member", "line"),
    ALL_USES,
    ids=[f"{a}:{o + '.' if o else ''}{m}" for a, o, m, _ in ALL_USES],
)
def test_used_attribute_exists_in_every_supported_major(
    api: str, owner: str, member: str, line: int
) -> None:
    if owner:
        for major in MAJORS[api]:
            assert owner in SYMBOLS[api][major]["classes"], (
                f"{owner} is not recorded for {api} {major}: add it to scripts/extract_symbols.py"
            )
    missing = [m for m in MAJORS[api] if not _exists(api, m, owner, member)]
    assert not missing, f"{owner or api}.{member} (line {line}) is not in {api} {missing}"


def test_the_scan_sees_every_receiver_kind() -> None:
    """A renamed variable would silently drop its uses from the check; fail instead."""
    owners = {owner for _, owner, _, _ in ALL_USES}
    expected = set(TRT_RECEIVERS.values()) | set(CUDA_RECEIVERS.values())
    assert expected <= owners, f"no uses found for {sorted(expected - owners)}"
    modules = {(api, member) for api, owner, member, _ in ALL_USES if not owner}
    assert ("tensorrt", "Builder") in modules and ("cudart", "cudaMalloc") in modules


def test_removed_and_made_up_names_are_caught() -> None:
    """The check can fail: TensorRT 11 removed these (weak typing), 10.x dropped v2 execution."""
    assert not _exists("tensorrt", "11", "BuilderFlag", "INT8")
    assert not _exists("tensorrt", "11", "ILayer", "set_output_type")
    assert not _exists("tensorrt", "10", "IExecutionContext", "execute_async_v2")
    assert not _exists("cudart", "13", "", "cudaMallocPitchedMadeUp")
    assert _exists("tensorrt", "11", "IExecutionContext", "set_optimization_profile_async")


def test_no_weak_typing_api_and_no_legacy_cuda_import() -> None:
    removed = {"int8_calibrator", "set_output_type", "OBEY_PRECISION_CONSTRAINTS", "INT8"}
    for file in FILES:
        text = (REPO / file).read_text()
        found = {m for api, owner, m, _ in uses(REPO / file) if api == "tensorrt"} & removed
        assert not found, f"{file} uses {found}"
        # `from cuda import cudart` is a 12.x-only shim; the image pins cuda-bindings 13.x.
        assert "from cuda import cudart" not in text
