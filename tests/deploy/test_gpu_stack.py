"""The GPU image's dependency set resolves to one CUDA major (a static check of the pins).

Which CUDA major each package targets is a fact about what PyPI and NVIDIA publish, recorded in
``cuda_major`` (checked from the wheels' metadata, see scripts/extract_symbols.py and the README):
onnxruntime-gpu is a CUDA 12 build up to 1.26 and a CUDA 13 build from 1.27; TensorRT's wheels
say it in their name (tensorrt-cu12/-cu13; the unsuffixed ``tensorrt`` switched majors at a patch
release, so it is refused); cuda-bindings/cuda-python follow CUDA's own major.
"""

from __future__ import annotations

import re

import pytest
import tomllib
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
    reqs = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][name]]
    return {r.name.lower(): r for r in reqs}


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


def test_cpu_onnxruntime_never_rides_along_with_onnxruntime_gpu() -> None:
    core = {Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]}
    installed_extras = re.search(r'"\$\{WHEEL\}\[([a-z,]+)\]"', stages()["gpu"])
    assert installed_extras, "the gpu stage does not install the project wheel with extras"
    extras = installed_extras.group(1).split(",")
    for name in ("", *extras):
        names = core if not name else set(extra(name))
        assert "onnxruntime" not in names, f"{name or 'core'} pulls onnxruntime into the GPU image"
    assert "pip show onnxruntime" in stages()["gpu"]  # the build fails if it crept in anyway
    assert "cpu" not in extras and "unsuffixed" not in extras
    assert all(not n.startswith("tensorrt") or n.startswith("tensorrt-cu") for n in extra("gpu"))


def test_onnxruntime_lower_bound_is_what_the_code_uses() -> None:
    """calibration_cache_path (engines/build/int8/*) appeared in onnxruntime 1.27."""
    uses = [
        p for p in (REPO / "engines").rglob("*.py") if "calibration_cache_path=" in p.read_text()
    ]
    assert uses, "the code no longer needs onnxruntime 1.27; lower the bounds"
    for name, package in (("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")):
        assert Version("1.26.99") not in extra(name)[package].specifier
        assert Version("1.27.0") in extra(name)[package].specifier
    assert "3.11" in PYPROJECT["project"]["requires-python"]  # the 1.27+ wheels need it
