"""The built-in model catalogue: ``model.yaml`` files shipped inside the package.

A built-in model needs no files of its own in the model repository: its spec is read from the
package, and ``models fetch`` writes only ``source/`` under ``$DETECT_HOME/models/NAME/``. So an
upgraded package's pins apply at once (the sidecar fingerprint then decides whether the source
must be made again). A ``model.yaml`` placed in the repository folder takes precedence: that is
how a user changes a built-in model's spec.
"""

from __future__ import annotations

from pathlib import Path

CATALOGUE = Path(__file__).resolve().parent / "catalogue"


def builtin_models() -> list[str]:
    """Names of the models shipped with the package."""
    return sorted(p.parent.name for p in CATALOGUE.glob("*/model.yaml"))


def spec_path(model_dir: Path) -> Path | None:
    """The ``model.yaml`` that describes ``model_dir``: its own, else the shipped one, else
    None (a folder holding only a user's ``source/model.onnx``, or no model at all)."""
    own = model_dir / "model.yaml"
    if own.is_file():
        return own
    shipped = CATALOGUE / model_dir.name / "model.yaml"
    return shipped if shipped.is_file() else None
