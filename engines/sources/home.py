"""The project home: one folder for models, built engines and download caches.

Every command finds the same files from any working directory. ``DETECT_HOME`` picks the home;
without it the home is ``$XDG_DATA_HOME/detect-serve``, else ``~/.local/share/detect-serve``
(the XDG base-directory default). Each folder inside it can be moved on its own
(``DETECT_MODELS_DIR``, ``DETECT_ENGINES_DIR``, ``DETECT_CACHE_DIR``).

The service's ``Settings`` extends ``HomeSettings``, so these are read in one place and listed
with the other settings; the engines package (which never imports the service) reads them here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

APP = "detect-serve"


def default_home() -> Path:
    """``$XDG_DATA_HOME/detect-serve``, else ``~/.local/share/detect-serve``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / APP


def _under_home(folder: str) -> Any:
    """A default_factory for a folder inside the (already validated) home."""
    return lambda data: data["home"] / folder


class HomeSettings(BaseSettings):
    """Where the project keeps its files (environment variables prefixed ``DETECT_``)."""

    model_config = SettingsConfigDict(env_prefix="DETECT_", env_file=".env", extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="the project home: models, engines and caches live under it",
        json_schema_extra={
            "shown_default": "`$XDG_DATA_HOME/detect-serve` or `~/.local/share/detect-serve`"
        },
    )
    # Declared after `home`: the factories read its validated value.
    models_dir: Path = Field(
        default_factory=_under_home("models"),
        description="model repository: NAME/source/model.onnx (fetched or added) and, for "
        "models that are not built in, NAME/model.yaml",
        json_schema_extra={"shown_default": "`$DETECT_HOME/models`"},
    )
    engines_dir: Path = Field(
        default_factory=_under_home("engines"),
        description="built variants and their manifest: NAME/manifest.json",
        json_schema_extra={"shown_default": "`$DETECT_HOME/engines`"},
    )
    cache_dir: Path = Field(
        default_factory=_under_home("cache"),
        description="downloaded package archives and files taken out of them (safe to delete)",
        json_schema_extra={"shown_default": "`$DETECT_HOME/cache`"},
    )

    @field_validator("home", "models_dir", "engines_dir", "cache_dir")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()


def registry_cache() -> Path:
    """Where files from package archives are cached (``engines.sources.registry``)."""
    return HomeSettings().cache_dir / "registry"
