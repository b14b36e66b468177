"""Optional dependencies: which ``detect-serve[EXTRA]`` provides each module the code imports
lazily, and one message for a command that needs an extra that is not installed.

A command checks its extras before doing any work (``require``), so a missing one never leaves
half-written output behind; an optional import that fails later anyway (``hint``) still ends
in the same message instead of a traceback.
"""

from __future__ import annotations

import importlib.util

# Top-level modules imported by name in the code, by the extra that installs them. Building
# (onnxconverter_common, faster_coco_eval, matplotlib) and benchmarking (httpx) are part of the
# default install, so a missing one is a broken install, reported as it is; `dev` holds only
# test and lint tools, which the package never imports.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "gpu": ("tensorrt", "cuda", "pynvml"),
}


class MissingExtra(Exception):
    """A command needs an optional dependency that is not installed."""

    def __init__(self, command: str, module: str, extra: str) -> None:
        super().__init__(
            f"{command} needs the optional dependency {module!r}: "
            f"pip install 'detect-serve[{extra}]'"
        )
        self.extra = extra


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package counts as missing
        return False


def require(command: str, *extras: str) -> None:
    """Raise ``MissingExtra`` for the first module of ``extras`` that cannot be imported."""
    for extra in extras:
        for module in EXTRA_MODULES[extra]:
            if not _installed(module):
                raise MissingExtra(command, module, extra)


def hint(command: str, exc: ModuleNotFoundError) -> MissingExtra | None:
    """The ``MissingExtra`` for an import of an optional module that failed; None otherwise."""
    top = (exc.name or "").partition(".")[0]
    for extra, modules in EXTRA_MODULES.items():
        if top in modules:
            return MissingExtra(command, top, extra)
    return None
