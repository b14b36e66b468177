"""Print the GPU image's Python requirements: the project's core dependencies (and any extras
named), without ``onnxruntime``.

The core dependencies include ``onnxruntime`` so that ``pip install .`` alone serves, builds and
benchmarks on CPU. The GPU image runs ``onnxruntime-gpu`` instead, which installs the same
``onnxruntime`` module: with both installed, whichever came last wins and the CUDA provider may
vanish. So the GPU stage installs the project wheel with ``--no-deps`` and then these lines
(plus its pinned GPU stack). Standard library only: it runs in the image's wheel stage.

    python scripts/gpu_requirements.py pyproject.toml [EXTRA ...]
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Never in the GPU image: the module onnxruntime-gpu provides under the same name.
CPU_ONLY = frozenset({"onnxruntime"})


def requirement_name(requirement: str) -> str:
    """The normalized project name of a requirement line (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def gpu_requirements(pyproject: Path, extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [line for line in lines if requirement_name(line) not in CPU_ONLY]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(gpu_requirements(Path(argv[0]), tuple(argv[1:]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
