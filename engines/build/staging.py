"""A variant is built in a private folder beside the results and moved in only when finished.

An interrupted or failed build (an exception, Ctrl-C, a missing module) then leaves nothing that a
later run, or the server, could take for a result: no half-written ``fp32.onnx`` next to a
manifest, and an earlier good artifact stays in place until its replacement is complete.
``os.replace`` within one folder is atomic, so readers see the old file or the new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = ".building-"
# Caches a variant build reads and extends; seeded into the staging folder, moved back with it.
REUSABLE = ("calibration-*.json", "timing-*.cache")  # TensorRT's: one per GPU model and version


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def sweep(out: Path) -> None:
    """Remove staging folders left by builds that were killed (their process is gone)."""
    for folder in out.glob(f"{PREFIX}*"):
        pid = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class Staging:
    """A private folder inside ``out`` (same file system, so moving in is a rename)."""

    def __init__(self, out: Path, reuse: Iterable[str] = REUSABLE) -> None:
        self.out = out
        self.dir = Path(tempfile.mkdtemp(dir=out, prefix=f"{PREFIX}{os.getpid()}-"))
        for pattern in reuse:
            for cached in out.glob(pattern):
                shutil.copy2(cached, self.dir / cached.name)

    def commit(self) -> None:
        """Move every finished file into ``out``, replacing older ones of the same name."""
        for path in sorted(self.dir.iterdir()):
            if path.is_file():
                path.replace(self.out / path.name)


@contextmanager
def staging(out: Path, reuse: Iterable[str] = REUSABLE) -> Iterator[Staging]:
    """A ``Staging`` whose folder is removed on the way out, with whatever was not committed."""
    stage = Staging(out, reuse)
    try:
        yield stage
    finally:
        shutil.rmtree(stage.dir, ignore_errors=True)
