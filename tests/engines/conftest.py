"""Fixtures shared by the engines tests: the default model's darknet files and a real photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.sources.catalogue import CATALOGUE
from engines.sources.registry import fetch
from engines.sources.repository import read_spec

DEFAULT_MODEL_DIR = CATALOGUE / "yolov3-tiny-coco"  # its model.yaml as shipped


@pytest.fixture(scope="session")
def darknet_files() -> dict[str, Path]:
    """The default model's cfg, weights and names: fetched once, cached across runs."""
    spec = read_spec(DEFAULT_MODEL_DIR)
    return {role: fetch(f.registry_file()) for role, f in spec.source.files.items()}


@pytest.fixture(scope="session")
def bus_tensor() -> np.ndarray:
    """bus.jpg letterboxed to 416x416 (grey 127 padding), RGB 0..1, NCHW with batch 1."""
    from engines.model.preprocess import decode_image, letterbox
    from engines.sources.sample_images import sample_image

    image = decode_image(sample_image("bus").read_bytes(), max_pixels=10**8)
    return np.ascontiguousarray(letterbox(image, (416, 416), pad_value=127)[0][None])
