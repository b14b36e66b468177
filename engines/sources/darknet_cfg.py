"""Darknet's two file formats: the ``.cfg`` network description and the ``.weights`` blob.

The weights file is a header (``major, minor, revision`` as int32, then ``seen`` as int64 when
``major * 10 + minor >= 2``, else int32) followed by little-endian float32 values, consumed in
cfg order; per convolutional layer: biases, then (with ``batch_normalize``) scales, rolling
means, rolling variances, then the kernel as (filters, channels, size, size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.errors import ModelFormatError


class DarknetFormatError(ModelFormatError):
    """A cfg or weights file that this converter cannot read, or that do not belong together."""


@dataclass
class Section:
    """One ``[kind]`` block of a cfg with its ``key=value`` options, as written."""

    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def integer(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise DarknetFormatError(f"[{self.kind}] needs {key}")
            return default
        return int(self.options[key])

    def integers(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]

    def numbers(self, key: str) -> list[float]:
        return [float(v) for v in self.options[key].split(",") if v.strip()]


def parse_cfg(text: str) -> list[Section]:
    """Sections in file order; the first one is ``[net]`` (checked by the converter)."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append(Section(line.strip("[]").strip()))
        elif "=" in line and sections:
            key, _, value = line.partition("=")
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetFormatError(f"cfg line {number} is neither [section] nor key=value")
    return sections


@dataclass(frozen=True)
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int

    @property
    def size(self) -> int:
        """Header bytes: ``seen`` became 64-bit in format 0.2."""
        return 12 + (8 if self.major * 10 + self.minor >= 2 else 4)


def read_header(data: bytes) -> WeightsHeader:
    if len(data) < 16:
        raise DarknetFormatError("weights file is too short for a darknet header")
    major, minor, revision = (int(v) for v in np.frombuffer(data[:12], dtype="<i4"))
    wide = major * 10 + minor >= 2
    seen = int(np.frombuffer(data[12 : 20 if wide else 16], dtype="<i8" if wide else "<i4")[0])
    return WeightsHeader(major, minor, revision, seen)


class WeightsReader:
    """Hands out the float32 values of a weights file in order; counts what is left over."""

    def __init__(self, data: bytes) -> None:
        self.header = read_header(data)
        body = data[self.header.size :]
        if len(body) % 4:
            raise DarknetFormatError("weights body is not a whole number of float32 values")
        self._values = np.frombuffer(body, dtype="<f4")
        self._pos = 0

    def take(self, n: int) -> np.ndarray:
        if self._pos + n > self._values.size:
            raise DarknetFormatError("weights file is shorter than the cfg needs")
        out = self._values[self._pos : self._pos + n].astype(np.float32)
        self._pos += n
        return out

    @property
    def remaining(self) -> int:
        return int(self._values.size - self._pos)
