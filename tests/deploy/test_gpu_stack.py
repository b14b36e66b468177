"""The GPU image's dependency set resolves to one CUDA major (a static check of the pins).

Which CUDA major each package targets is a fact about what PyPI and NVIDIA publish, recorded in
``cuda_major`` (checked from the wheels' metadata, see scripts/extract_symbols.py and the README):
onnxruntime-gpu is a CUDA 12 build up to 1.26 and a CUDA 13 build from 1.27; TensorRT's wheels
say it in their name (tensorrt-cu12/-cu13; the unsuffixed ``tensorrt`` switched majors at a patch
release, so it is refused); cuda-bindings/cuda-python follow CUDA's own major.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.conftest import REPO
from tests.deploy.test_dockerfile import stages

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
GPU_PACKAGES = {"onnxruntime-gpu", "tensorrt-cu13", "cuda-bindings", "nvidia-ml-py"}


def cuda_major(package: str, version: Version) -> int | None:
    """The CUDA major a package release is built for; None when it has none (pure Python)."""
    if package == "onnxruntime-gpu":
        return 12 if version < Version("1.27") else 13
    if match := re.fullmatch(r"tensorrt-cu(\d+)", package):
        return int(match.group(1))
    if package in ("cuda-bindings", "cuda-python"):
        return version.major
    if package == "nvidia-ml-py":
        return None  # talks to the driver through NVML; any driver major
    raise AssertionError(f"{package}: CUDA major unknown, add it to cuda_major()")


def image_pins() -> dict[str, Version]:
    """name -> pinned version in the gpu stage's pip install."""
    body = stages()["gpu"].replace("\\\n", " ")
    pins = re.findall(r'"([A-Za-z0-9_.-]+)==([0-9][^"]*)"', body)
    return {name.lower(): Version(version) for name, version in pins}


def base_image_cuda_major() -> int:
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.", text, flags=re.M)
    assert match, "the gpu stage's base is not an nvidia/cuda image"
    return int(match.group(1))


def extra(name: str) -> dict[str, Requirement]:
    lines = PYPROJECT["project"]["optional-dependencies"][name]
    return {r.name.lower(): r for r in map(Requirement, lines)}


def test_the_image_pins_one_cuda_major_matching_its_base() -> None:
    pins = image_pins()
    assert set(pins) == GPU_PACKAGES, pins
    majors = {p: cuda_major(p, v) for p, v in pins.items()}
    found = {m for m in majors.values() if m is not None}
    assert found == {base_image_cuda_major()}, majors
    assert "https://pypi.nvidia.com" in stages()["gpu"]  # TensorRT's libraries live there


@pytest.mark.parametrize("package", sorted(GPU_PACKAGES))
def test_gpu_extra_has_bounds_inside_one_cuda_major(package: str) -> None:
    requirement = extra("gpu")[package]
    specifier: SpecifierSet = requirement.specifier
    assert any(s.operator == "<" for s in specifier), f"{requirement} has no upper bound"
    assert any(s.operator == ">=" for s in specifier), f"{requirement} has no lower bound"
    if package == "nvidia-ml-py":
        return
    low = Version(next(s.version for s in specifier if s.operator == ">="))
    high = Version(next(s.version for s in specifier if s.operator == "<"))
    if not any(high.release[1:]):  # "<14" admits 13.x at most
        high = Version(f"{high.major - 1}.9999")
    # every release the range admits is built for the image's CUDA major (bounds are enough:
    # the majors change monotonically with the version)
    assert cuda_major(package, low) == base_image_cuda_major() == cuda_major(package, high)
    assert image_pins()[package] in specifier, "the image pin is outside the extra's range"


def _gpu_requirements(*extras: str) -> list[Requirement]:
    """What scripts/gpu_requirements.py prints, run as the image's wheel stage runs it."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_requirements.py"), "pyproject.toml", *extras],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [Requirement(line) for line in done.stdout.splitlines() if line.strip()]


def test_core_dependencies_serve_on_cpu_with_onnxruntime() -> None:
    """`pip install .` alone serves, builds and benchmarks on CPU: onnxruntime is a core
    dependency, and no extra is needed for it (nor for the GPU image's build and bench)."""
    core = {r.name.lower(): r for r in map(Requirement, PYPROJECT["project"]["dependencies"])}
    assert "onnxruntime" in core
    assert "cpu" not in PYPROJECT["project"]["optional-dependencies"]


def test_the_gpu_image_never_installs_onnxruntime_beside_onnxruntime_gpu() -> None:
    gpu = stages()["gpu"].replace("\\\n", " ")
    installs = re.findall(r"pip install ([^&]+)", gpu)
    wheel = [i for i in installs if '"${WHEEL}' in i]
    # The wheel goes in alone (its core dependencies would bring onnxruntime) ...
    assert wheel and all("--no-deps" in i and '"${WHEEL}"' in i for i in wheel), wheel
    # ... its other dependencies from the list the wheel stage writes with the script ...
    assert "gpu_requirements.py pyproject.toml > /requirements/gpu.txt" in stages()["wheel"]
    assert "!scripts/gpu_requirements.py" in (REPO / ".dockerignore").read_text().splitlines()
    assert any("-r /tmp/gpu-requirements.txt" in i for i in installs), installs
    listed = {r.name.lower() for r in _gpu_requirements()}
    assert "onnxruntime" not in listed
    expected = PYPROJECT["project"]["dependencies"]
    assert listed == {Requirement(r).name.lower() for r in expected} - {"onnxruntime"}
    # ... and no line of any install names the CPU package, by requirement or by extra.
    for line in installs:
        for word in re.findall(r'"([^"]+)"', line):
            if not word.startswith("${WHEEL}"):
                assert Requirement(word).name.lower() != "onnxruntime", line
        assert "[" not in line.replace('"${WHEEL}"', ""), f"an extra is installed: {line}"
    assert "pip show onnxruntime" in gpu  # the build fails if it crept in anyway
    assert all(not n.startswith("tensorrt") or n.startswith("tensorrt-cu") for n in extra("gpu"))


def test_the_script_adds_the_gpu_extra_for_hand_installs() -> None:
    names = {r.name.lower() for r in _gpu_requirements("gpu")}
    assert {"onnxruntime-gpu", "tensorrt-cu13", "onnx", "fastapi"} <= names
    assert "onnxruntime" not in names


def test_onnxruntime_lower_bound_is_what_the_code_uses() -> None:
    """calibration_cache_path (engines/build/int8/*) appeared in onnxruntime 1.27."""
    uses = [
        p for p in (REPO / "engines").rglob("*.py") if "calibration_cache_path=" in p.read_text()
    ]
    assert uses, "the code no longer needs onnxruntime 1.27; lower the bounds"
    core = {r.name.lower(): r for r in map(Requirement, PYPROJECT["project"]["dependencies"])}
    for specifier in (core["onnxruntime"].specifier, extra("gpu")["onnxruntime-gpu"].specifier):
        assert Version("1.26.99") not in specifier
        assert Version("1.27.0") in specifier
    assert "3.11" in PYPROJECT["project"]["requires-python"]  # the 1.27+ wheels need it
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"  # lint for what is supported
