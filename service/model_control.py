"""Model control while serving: the model repository's index, load (or reload) and unload.

What Triton calls the repository extension, behind one setting, ``model_control`` (off by
default, like Triton's ``--model-control-mode=none``: load and unload change what every client
of the server gets, so an operator turns them on deliberately, and with API keys on any network
they do not fully trust). The index is read-only and always answered.

A load builds a new version of the model from what is on disk now (the build's engines, or the
source), warms it, starts its batchers and only then swaps it in; a reload that fails leaves
the served version untouched. The old version is retired: no new request finds it, the requests
that hold it (``service.leases``) finish on it, then its batchers and engines close. An unload
is the same retirement with nothing swapped in, answered once the drain is over.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from engines.errors import EngineError
from engines.sources.repository import MODEL_YAML, source_onnx
from service.audit import PrecisionAudit
from service.config import Settings
from service.errors import BadRequest, ModelNotFound, ServiceError, ShuttingDownError
from service.registry import ModelRegistry, ServedModel

log = logging.getLogger(__name__)

# A model's name is a folder name in the repository, never a path.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


class ModelControlDisabled(ServiceError):
    status, code = 403, "model_control_disabled"


class ModelLoadFailed(ServiceError):
    # Triton answers a load that fails with 400; the message says why, and what still serves.
    status, code = 400, "model_load_failed"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (Triton's fields)."""

    name: str
    version: str
    state: str
    reason: str


class ModelControl:
    def __init__(self, registry: ModelRegistry, settings: Settings, audit: PrecisionAudit) -> None:
        self._registry = registry
        self._settings = settings
        self._audit = audit
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._busy: dict[str, tuple[str, int]] = {}  # name -> (LOADING|UNLOADING, version)
        self._draining: list[ServedModel] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_version: dict[str, int] = {}
        # Why the last load of a model that is not served failed. Kept here, not in the
        # registry's ``failed``: a failed optional load must not make the server unready.
        self._errors: dict[str, str] = {}

    # -- the repository ------------------------------------------------------------------------

    def repository(self) -> list[str]:
        """Every model the repository holds (a folder with a source ONNX or a model.yaml), with
        those configured or served even if their folder is gone."""
        found: set[str] = set()
        root = self._settings.models_dir
        if root.is_dir():
            for folder in root.iterdir():
                if not NAME.fullmatch(folder.name) or not folder.is_dir():
                    continue
                if source_onnx(root, folder.name).is_file() or (folder / MODEL_YAML).is_file():
                    found.add(folder.name)
        registry = self._registry
        return sorted(found | set(self._settings.models) | set(registry.models))

    def checked_name(self, name: str) -> str:
        """``name`` if the repository holds it; 404 otherwise (paths never match)."""
        if NAME.fullmatch(name) and name in self.repository():
            return name
        known = ", ".join(self.repository()) or "none"
        raise ModelNotFound(f"no model {name[:64]!r} in the model repository; it holds: {known}")

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        registry = self._registry
        entries: list[IndexEntry] = []
        for name in self.repository():
            served = registry.models.get(name)
            busy = self._busy.get(name)
            if served is not None:
                entries.append(IndexEntry(name, str(served.version), READY, ""))
            elif busy is None:
                why = registry.failed.get(name) or self._errors.get(name)
                if why is None:
                    why = "unloaded" if name in registry.unloaded else "not loaded"
                version = self._last_version.get(name)
                entries.append(IndexEntry(name, str(version or ""), UNAVAILABLE, why))
            if busy is not None and busy[0] == LOADING:
                entries.append(IndexEntry(name, str(busy[1]), LOADING, "loading and warming up"))
        for old in self._draining:
            holding = f"draining: {old.holds.count} requests still running on it"
            entries.append(IndexEntry(old.name, str(old.version), UNLOADING, holding))
        if ready_only:
            entries = [e for e in entries if e.state == READY]
        return sorted(entries, key=lambda e: (e.name, int(e.version or 0)))

    # -- load and unload (event loop) ----------------------------------------------------------

    def check_allowed(self) -> None:
        if not self._settings.model_control:
            raise ModelControlDisabled(
                "model control is disabled on this server; start it with "
                "DETECT_MODEL_CONTROL=true to load and unload models while serving"
            )
        if self._registry.draining:
            raise ShuttingDownError("the server is shutting down")

    async def load(self, name: str) -> ServedModel:
        """Load ``name`` (a new version if it is served), warm it and serve it."""
        self.check_allowed()
        name = self.checked_name(name)
        async with self._lock:
            registry = self._registry
            current = registry.models.get(name)
            version = max(self._last_version.get(name, 0), current.version if current else 0) + 1
            self._busy[name] = (LOADING, version)
            try:
                try:
                    model = await run_in_threadpool(registry.load_version, name, version)
                except Exception as exc:  # whatever went wrong, the served version stays
                    if not isinstance(exc, EngineError | OSError | ValueError):
                        log.exception("unexpected error loading %s", name)
                    if current is None and name not in registry.failed:
                        self._errors[name] = str(exc)
                    elif name in registry.failed:  # configured, and still failing
                        registry.failed[name] = str(exc)
                    keeps = (
                        f"; version {current.version} keeps serving" if current is not None else ""
                    )
                    log.error("load of %s failed: %s%s", name, exc, keeps)
                    raise ModelLoadFailed(f"failed to load {name!r}: {exc}{keeps}") from exc
                registry.start_model(model)
                self._audit.attach_model(model)
                old = registry.swap(name, model)
                self._errors.pop(name, None)
                self._last_version[name] = version
                log.info("%s version %d serving", name, version)
            finally:
                self._busy.pop(name, None)
        if old is not None:
            # The reply does not wait for the old version's requests: they finish on it.
            task = asyncio.create_task(self._retire(old), name=f"retire-{name}-{old.version}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return model

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; returns once its accepted requests have been answered."""
        self.check_allowed()
        name = self.checked_name(name)
        async with self._lock:
            registry = self._registry
            served = registry.models.get(name)
            if served is None:  # already not served: nothing to do (as Triton)
                registry.swap(name, None)
                self._errors.pop(name, None)
                return
            self._busy[name] = (UNLOADING, served.version)
            try:
                old = registry.swap(name, None)
                self._audit.detach(name)
                if old is not None:
                    self._last_version[name] = old.version
                    await self._retire(old)
            finally:
                self._busy.pop(name, None)
        log.info("%s unloaded", name)

    async def _retire(self, old: ServedModel) -> None:
        self._draining.append(old)
        try:
            await self._registry.retire(old, self._settings.shutdown_grace_s)

            def close_engines() -> None:
                for variant in old.variants.values():
                    variant.engine.close()

            # After any shadow run already on these engines (the audit runs them one at a time).
            await self._audit.after_shadow(close_engines)
            log.info("%s version %d retired", old.name, old.version)
        finally:
            self._draining.remove(old)

    async def close(self) -> None:
        """Shutdown: let every retiring version finish its drain."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def ready_only_flag(body: object) -> bool:
    """The index request's optional ``{"ready": bool}``."""
    if body is None or body == {}:
        return False
    if not isinstance(body, dict) or set(body) - {"ready"}:
        raise BadRequest('the index request body is {} or {"ready": true|false}')
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest("'ready' must be true or false")
    return ready
