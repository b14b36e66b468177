"""The service's one settings object.

Read from environment variables prefixed ``DETECT_`` (and an optional ``.env``); list values are
JSON (``DETECT_MODELS='["yolov3-tiny-coco"]'``). Built in the app factory, never at import time,
and validated there: an impossible combination fails start-up with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from engines.precision import Precision, RequestedPrecision
from engines.runtime.backends import DEFAULT_BACKEND, BackendName
from engines.sources.home import HomeSettings

DEFAULT_MODEL = "yolov3-tiny-coco"


class Settings(HomeSettings):
    """Everything configurable about the service (the home's folders come from HomeSettings)."""

    model_config = SettingsConfigDict(env_prefix="DETECT_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port (logged)
    # KServe v2 gRPC endpoint, served by the same process. 0 turns it off (as it always has), so
    # "any free port" needs its own word: side-by-side servers (tests, benchmarks) use it.
    grpc_port: Annotated[int, Field(ge=0, le=65535)] | Literal["any"] = Field(
        8001,
        description="KServe v2 gRPC port; `0` turns it off, `any` binds a free port (logged)",
    )

    models: list[str] = Field(default_factory=lambda: [DEFAULT_MODEL])
    default_model: str = DEFAULT_MODEL
    default_precision: RequestedPrecision = "auto"

    # What `detect-serve serve --prepare` builds when a model has no build yet.
    prepare_precisions: list[Precision] = Field(
        default_factory=lambda: [Precision.FP32, Precision.INT8]
    )

    # Execution backend for built variants: a name in engines/runtime/backends.py's table.
    backend: BackendName = DEFAULT_BACKEND
    ort_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = Field(0, ge=0, description="0 = ONNX Runtime's default")
    ort_session_config: dict[str, str] = Field(default_factory=dict)

    # Request defaults (a model's model.yaml `defaults`, or its family's, come first: Ultralytics
    # models answer like `yolo predict`, iou 0.7).
    default_conf: float = Field(
        0.25, ge=0.0, le=1.0, description="`conf` when neither the request nor the model sets it"
    )
    default_iou: float = Field(
        0.45,
        ge=0.0,
        le=1.0,
        description="`iou` likewise (a model.yaml `defaults` wins; Ultralytics models: 0.7)",
    )
    default_max_det: int = Field(300, ge=1, le=10_000, description="`max_det` likewise")

    # Batching (a model's model.yaml `batching` overrides these for that model).
    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(4.0, ge=0.0, le=10_000.0)
    max_queue: int = Field(64, ge=1)
    concurrent_batches: int = Field(1, ge=1, le=16)
    default_deadline_ms: float = Field(10_000.0, gt=0.0)
    # `auto` prefers the fastest variant at least this close to FP32 (mAP50-95 agreement).
    auto_min_agreement: float = Field(0.99, ge=0.0, le=1.0)
    # Load-adaptive `auto`: move to a faster variant when queue wait exceeds this.
    queue_wait_slo_ms: float = Field(50.0, gt=0.0)
    # Batches of size 1 and max_batch timed per variant at warm-up (median), so `auto` ranks
    # variants on this host's speed from the first request; 0 = trust the manifest until the
    # first real batches.
    warmup_timing_runs: int = Field(3, ge=0, le=100)

    # Input limits, checked before any heavy work.
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1)
    max_images_per_request: int = Field(16, ge=1)
    max_detections: int = Field(1000, ge=1)
    # Decoding cost grows with rows too: no side may exceed this (1 x 39,999,999 is a bomb).
    max_image_side: int = Field(20_000, ge=1)
    # Per-process decode budget: memory decodes may hold at once, and decode worker threads
    # (0 = one per CPU). An image that alone needs more memory is refused with 413.
    decode_memory_bytes: int = Field(1024 * 1024 * 1024, ge=1024 * 1024)
    decode_workers: int = Field(0, ge=0, le=64)

    # Protocol limits (see service/protocol.py and service/limits.py).
    max_header_bytes: int = Field(32 * 1024, ge=1024)  # request line + every header
    max_headers: int = Field(100, ge=8)
    header_timeout_s: float = Field(10.0, gt=0.0)  # a request's headers must arrive within this
    body_idle_timeout_s: float = Field(10.0, gt=0.0)  # longest silence while a body is sent
    body_min_bytes_per_s: int = Field(8 * 1024, ge=0)  # average rate a body must keep up ...
    body_rate_grace_s: float = Field(5.0, ge=0.0)  # ... once this long has passed
    max_connections: int = Field(1024, ge=1)  # open connections; more get 503 at once

    # Security.
    api_keys: list[str] = Field(default_factory=list)
    protect_health: bool = False
    protect_metrics: bool = False
    # With API keys set, /docs, /redoc and /openapi.json need a key too (False: open).
    protect_docs: bool = True
    cors_origins: list[str] = Field(default_factory=list)

    # Logs: "json" writes one JSON object per line; every line carries the request ID.
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per log line (with its request ID)"
    )
    # One access line per HTTP request (method, path, status, duration, request ID).
    log_requests: bool = Field(
        True, description="one access log line per HTTP request, with its request ID"
    )

    # /detect JSON bodies may name image URLs: off unless hosts are listed here (exact host
    # names, or "*.example.com"). Fetches have their own size and time limits and never follow
    # a redirect; a host that resolves to a private or loopback address is refused unless it
    # is listed in url_allow_private_hosts.
    url_fetch_hosts: list[str] = Field(
        default_factory=list,
        description="hosts `/detect` may fetch image URLs from (`*.example.com` allowed); "
        "empty = URL input off",
    )
    url_allow_private_hosts: list[str] = Field(
        default_factory=list,
        description="of those, hosts allowed to resolve to private or loopback addresses",
    )
    url_fetch_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="largest image fetched from a URL (`413` above it)"
    )
    url_fetch_timeout_s: float = Field(
        5.0, gt=0.0, le=120.0, description="time limit of one URL fetch"
    )

    shutdown_grace_s: float = Field(25.0, ge=0.0)
    # Load/unload/reload while serving (the v2 repository extension). Off by default, like
    # Triton's --model-control-mode=none: it changes what every client is served.
    model_control: bool = False

    # Live precision audit (service/audit/): re-run a fraction of reduced-precision requests in
    # FP32 off the request path and track their agreement. 0 turns it off.
    audit_sample_fraction: float = Field(0.01, ge=0.0, le=1.0)
    # Device seconds the shadow runs may use per second of wall time (0.05 = 5% of the device).
    audit_budget: float = Field(0.05, gt=0.0, le=1.0)
    audit_window: int = Field(200, ge=1, le=10_000, description="shadow samples per agreement")
    audit_min_samples: int = Field(20, ge=1, description="samples before agreement is reported")
    # Off by default: with it on, `auto` stops choosing a variant whose live agreement is under
    # its build budget, until it recovers (or the variant is rebuilt and the server restarted).
    audit_demote: bool = False
    # Off by default (privacy: these are users' images). A folder; each model gets a subfolder
    # of PNGs that `detect-serve build --calib DIR/MODEL` accepts.
    audit_keep_dir: Path | None = None
    audit_keep_max_files: int = Field(500, ge=1)
    audit_keep_max_bytes: int = Field(256 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_model not in self.models:
            raise ValueError(
                f"default_model {self.default_model!r} is not among models {self.models}"
            )
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a name twice: {self.models}")
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"grpc_port and port are both {self.port}")
        if self.audit_min_samples > self.audit_window:
            raise ValueError(
                f"audit_min_samples ({self.audit_min_samples}) must be <= audit_window "
                f"({self.audit_window})"
            )
        if self.max_queue < self.max_batch:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be >= max_batch ({self.max_batch})"
            )
        return self
