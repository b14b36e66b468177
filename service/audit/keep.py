"""Disagreeing samples kept on disk for recalibration: bounded, off by default.

Privacy: these are users' images. Only the model's input is kept (the letterboxed picture the
variant saw, re-encoded as PNG: no EXIF, no location, no camera data, at model resolution), never
request metadata; the store stops at its file and byte bounds instead of rotating, so nothing
grows or disappears behind an operator's back. Each model gets a folder of PNGs, which is what
``detect-serve build MODEL --calib DIR/MODEL`` reads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def to_png(tensor: np.ndarray) -> bytes:
    """(3, H, W) float 0..1 model input -> PNG bytes."""
    pixels = np.clip(np.rint(tensor.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class SampleStore:
    """At most ``max_files`` PNGs and ``max_bytes`` in all under ``root`` (existing ones count)."""

    def __init__(self, root: Path, max_files: int, max_bytes: int) -> None:
        self.root = root
        self._max_files = max_files
        self._max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        existing = [p for p in root.glob("*/*.png") if p.is_file()]
        self._files = len(existing)
        self._bytes = sum(p.stat().st_size for p in existing)
        self._full_logged = False
        self._lock = threading.Lock()

    def keep(self, model: str, precision: str, tensor: np.ndarray) -> bool:
        """Write one sample; False when the store is full (or the name is unusable)."""
        if not _SAFE_NAME.match(model):
            return False
        png = to_png(tensor)
        with self._lock:
            if self._files + 1 > self._max_files or self._bytes + len(png) > self._max_bytes:
                if not self._full_logged:
                    log.warning("audit sample store %s is full; keeping no more", self.root)
                    self._full_logged = True
                return False
            folder = self.root / model
            folder.mkdir(exist_ok=True)
            target = folder / f"{precision}-{hashlib.sha256(png).hexdigest()[:16]}.png"
            if target.exists():  # the same picture again: nothing new to learn from
                return False
            partial = folder / f".{target.name}.partial"  # hidden: --calib skips dot files
            partial.write_bytes(png)
            partial.replace(target)
            self._files += 1
            self._bytes += len(png)
            return True
