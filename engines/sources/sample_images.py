"""Real photos shipped inside registry packages: test inputs and the default calibration set.

Licences: the Ultralytics assets are AGPL-3.0 project files; scikit-image's sample images are
public domain or CC0 (see skimage/data/README in the wheel); scikit-learn's china.jpg is CC BY
2.0 (Wikimedia). They are downloaded, never committed.
"""

from __future__ import annotations

from pathlib import Path

from engines.sources.registry import RegistryFile, fetch

_ULTRALYTICS = "ultralytics==8.4.190"
_SKIMAGE = "scikit-image==0.26.0"
# Archive pins where the release has a single archive (py3-none-any wheel, sdist); scikit-image
# ships one wheel per platform, so only its members are pinned.
_ULTRALYTICS_WHEEL = "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8"
_SAHI_SDIST = "f2074b3b3aa0f655dbdd69fbb1f1a0b985220f5fb3d920a4206eba160d37028a"

SAMPLE_IMAGES: dict[str, RegistryFile] = {
    "bus": RegistryFile(
        _ULTRALYTICS,
        "wheel",
        "ultralytics/assets/bus.jpg",
        "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63",
        _ULTRALYTICS_WHEEL,
    ),
    "zidane": RegistryFile(
        _ULTRALYTICS,
        "wheel",
        "ultralytics/assets/zidane.jpg",
        "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb",
        _ULTRALYTICS_WHEEL,
    ),
    "coffee": RegistryFile(
        _SKIMAGE,
        "wheel",
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    ),
    "astronaut": RegistryFile(
        _SKIMAGE,
        "wheel",
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    "chelsea": RegistryFile(
        _SKIMAGE,
        "wheel",
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    "rocket": RegistryFile(
        _SKIMAGE,
        "wheel",
        "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    ),
    "camera": RegistryFile(
        _SKIMAGE,
        "wheel",
        "skimage/data/camera.png",
        "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    ),
    "motorcycle_left": RegistryFile(
        _SKIMAGE,
        "wheel",
        "skimage/data/motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    ),
    "motorcycle_right": RegistryFile(
        _SKIMAGE,
        "wheel",
        "skimage/data/motorcycle_right.png",
        "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
    ),
    "terrain2": RegistryFile(
        "sahi==0.12.8",
        "sdist",
        "demo/demo_data/terrain2.png",
        "74edb8eb53871163b0ca1854e1c39029a21371de965d7caa704e39f349e3916a",
        _SAHI_SDIST,
    ),
}
# Real labels (COCO json, 5 cars) for the terrain2 photo.
TERRAIN2_LABELS = RegistryFile(
    "sahi==0.12.8",
    "sdist",
    "demo/demo_data/terrain2_coco.json",
    "4081bfdfd326652d795a830397e24b38bc968fd7377f86f2b7ffc244968b5747",
    _SAHI_SDIST,
)

# The default demo sets of the builder, disjoint: calibrate on one, validate on the other.
CALIBRATION_PHOTOS = (
    "astronaut",
    "chelsea",
    "rocket",
    "camera",
    "motorcycle_left",
    "motorcycle_right",
)
VALIDATION_PHOTOS = ("bus", "zidane", "coffee")


def sample_image(name: str) -> Path:
    """Local path of a named sample photo (downloaded and verified on first use).

    Raises ``KeyError`` for an unknown name; see ``engines.sources.registry.fetch`` for the rest.
    """
    try:
        spec = SAMPLE_IMAGES[name]
    except KeyError:
        raise KeyError(f"no sample image {name!r}; known: {', '.join(SAMPLE_IMAGES)}") from None
    return fetch(spec)
