"""The plain server users would write: FastAPI + one ONNX Runtime session, one image per run.

Same model file and the same pre/post-processing code as detect-serve (``ModelPipeline``), so
the benchmark compares serving, not image code. ``python -m bench.peer_fastapi ONNX --port P``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, UploadFile

from bench.peer_common import OPTIONS, as_json_detections
from engines.model.pipeline import load_model_pipeline


def create_app(onnx_path: Path) -> FastAPI:
    pipeline = load_model_pipeline(onnx_path, "peer")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/detect")
    def detect(image: UploadFile) -> dict[str, Any]:  # sync: FastAPI runs it in a thread
        prepared = pipeline.prepare(image.file.read())
        values = session.run(None, {name: prepared.tensor[None]})
        found = pipeline.finish(dict(zip(outputs, values, strict=True)), prepared, OPTIONS)
        return {"detections": as_json_detections(found, pipeline.info.class_names)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.onnx), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
