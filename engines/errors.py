"""Typed errors raised by the engines package.

The service maps these to HTTP in one place (``service/errors.py``); the engines package itself
knows nothing about HTTP.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error raised by the engines package."""


class EngineLoadError(EngineError):
    """A backend could not load an artifact (missing library, corrupt file, wrong device)."""


class ModelFormatError(EngineError):
    """An ONNX file is not a usable detection model (not ONNX, or no known output layout)."""


class ImageDecodeError(EngineError):
    """Bytes that are not a decodable image (empty, truncated, not an image at all)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose declared pixel count exceeds the configured limit (decompression bomb)."""


class InferenceError(EngineError):
    """A batch failed inside the engine. ``fatal`` means the engine cannot serve any more."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class CompilerUnavailableError(EngineError):
    """A backend cannot compile its artifact on this host (its compiler is not installed): the
    build records the proven variant ONNX as pending, to be compiled where it can be."""


class ArtifactMismatchError(EngineLoadError):
    """A built artifact does not match its manifest or this host (hash, tool version, device)."""


class SourceFetchError(EngineError):
    """A pinned registry package could not be downloaded, or lacks the expected member."""


class SourceIntegrityError(EngineError):
    """A downloaded archive or file does not have the sha256 it is pinned to."""
