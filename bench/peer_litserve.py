"""LitServe with its dynamic batching (max 8 images, 4 ms wait), one ORT session.

Same model file and pre/post-processing code as detect-serve. Its API process parses the upload
and hands it to the inference worker process, which decodes, batches and runs the session.
``python -m bench.peer_litserve ONNX --port P``.
"""

# No ``from __future__ import annotations``: LitServe compares decode_request's annotation with
# the ``Request`` class itself, and a string annotation would make it pickle the whole request.
import argparse
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort
from fastapi import Request

from bench.peer_common import OPTIONS, as_json_detections
from engines.model.pipeline import PreparedImage, load_model_pipeline


class DetectAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, onnx_path: Path, max_batch: int, wait_s: float) -> None:
        super().__init__(max_batch_size=max_batch, batch_timeout=wait_s, api_path="/detect")
        self.onnx_path = onnx_path

    def setup(self, device: str) -> None:
        self.pipeline = load_model_pipeline(self.onnx_path, "peer")
        self.session = ort.InferenceSession(str(self.onnx_path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def decode_request(self, request: Request) -> PreparedImage:
        # Annotated ``Request``: LitServe then parses the multipart form in its API process and
        # hands the parsed form (not the request) to this worker.
        form: Any = request
        return self.pipeline.prepare(form["image"].file.read())

    def batch(self, inputs: list[PreparedImage]) -> list[PreparedImage]:
        return inputs

    def predict(self, images: list[PreparedImage]) -> list[dict[str, Any]]:
        values = self.session.run(None, {self.input: np.stack([i.tensor for i in images])})
        outputs = dict(zip(self.outputs, values, strict=True))
        names = self.pipeline.info.class_names
        return [
            {
                "detections": as_json_detections(
                    self.pipeline.finish(outputs, image, OPTIONS, k), names
                )
            }
            for k, image in enumerate(images)
        ]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=4.0)
    args = parser.parse_args()
    api = DetectAPI(args.onnx, args.max_batch, args.wait_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
