#!/usr/bin/env python3
"""Record Ultralytics' own predictions (what `yolo predict` returns) as JSON reference files.

For every model given, and every photo (default: bus.jpg and zidane.jpg from the installed
ultralytics package's assets/), runs

    YOLO(model, task="detect").predict(source=photo, conf=0.25, iou=0.7, verbose=False)

i.e. Ultralytics' defaults (conf=0.25 is also what YOLO.predict() sets when conf is not given;
everything else comes from ultralytics/cfg/default.yaml), and writes OUT/NAME-PHOTO.json with:
boxes (xyxy in original-image pixels, float), conf, cls, class name; the predictor's full
effective args; the letterboxed input tensor shape/dtype actually fed to the model; the model
and image sha256; ultralytics/torch/onnxruntime versions.

Usage:
    python make_reference_predictions.py --out reference NAME=path/to/model.onnx [NAME=model.pt ...]
    python make_reference_predictions.py --out reference/fixtures --fixtures fixtures/fixtures.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

PREDICT_KW = {
    "conf": 0.25,
    "iou": 0.7,
}  # == Ultralytics' predict defaults, passed explicitly for the record


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jsonable(v):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def predict_one(name: str, model_path: Path, photo: Path, out_dir: Path, versions: dict) -> dict:
    import numpy as np
    from ultralytics import YOLO

    model = YOLO(str(model_path), task="detect")
    fed = {}
    results = None

    # capture the exact tensor the predictor feeds the model (after letterbox, BGR->RGB, /255)
    def run():
        nonlocal results
        results = model.predict(source=str(photo), verbose=False, **PREDICT_KW)

    import ultralytics.engine.predictor as P

    orig_pre = P.BasePredictor.preprocess

    def spy(self, im):
        t = orig_pre(self, im)
        fed.update(
            shape=list(t.shape),
            dtype=str(t.dtype).replace("torch.", ""),
            mean=float(t.float().mean()),
            imgsz=list(self.imgsz),
        )
        return t

    P.BasePredictor.preprocess = spy
    try:
        run()
    finally:
        P.BasePredictor.preprocess = orig_pre

    r = results[0]
    pred_args = {k: jsonable(v) for k, v in vars(model.predictor.args).items()}
    b = r.boxes
    dets = []
    xyxy = b.xyxy.cpu().numpy().astype(np.float64)
    conf = b.conf.cpu().numpy().astype(np.float64)
    cls = b.cls.cpu().numpy().astype(np.int64)
    for i in range(len(b)):
        dets.append(
            {
                "xyxy": [round(float(x), 4) for x in xyxy[i]],
                "conf": round(float(conf[i]), 6),
                "cls": int(cls[i]),
                "name": r.names[int(cls[i])],
            }
        )
    rec = {
        "model_name": name,
        "model_file": str(model_path),
        "model_sha256": sha256(model_path),
        "photo": photo.name,
        "photo_sha256": sha256(photo),
        "orig_shape_hw": list(r.orig_shape),
        "predict_call": f"YOLO({model_path.name!r}, task='detect').predict(source={photo.name!r}, verbose=False, "
        + ", ".join(f"{k}={v!r}" for k, v in PREDICT_KW.items())
        + ")",
        "model_input": fed,
        "model_format": getattr(model.predictor.model, "format", None),
        "model_dynamic": bool(getattr(model.predictor.model, "dynamic", False)),
        "model_end2end": bool(getattr(model.predictor.model, "end2end", False)),
        "model_fp16": bool(getattr(model.predictor.model, "fp16", False)),
        "num_detections": len(dets),
        "detections": dets,
        "names": {str(k): v for k, v in r.names.items()},
        "speed_ms": {k: round(v, 2) for k, v in (r.speed or {}).items() if v is not None},
        "predictor_args": pred_args,
        "versions": versions,
    }
    out = out_dir / f"{name}-{photo.stem}.json"
    out.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="NAME=PATH (onnx or pt)")
    ap.add_argument("--out", type=Path, default=Path("reference"))
    ap.add_argument(
        "--photos", nargs="*", type=Path, help="default: ultralytics/assets/bus.jpg zidane.jpg"
    )
    ap.add_argument("--fixtures", type=Path, help="fixtures.json: add every fixture listed there")
    args = ap.parse_args(argv)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    # keep Ultralytics' settings.json (it writes one on import) out of ~/.config
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
    import onnxruntime
    import torch
    import ultralytics

    versions = {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0],
    }
    assets = Path(ultralytics.__file__).parent / "assets"
    photos = args.photos or [assets / "bus.jpg", assets / "zidane.jpg"]
    models = []
    for spec in args.models:
        name, _, path = spec.partition("=")
        models.append((name, Path(path)))
    if args.fixtures:
        idx = json.loads(args.fixtures.read_text())
        for f in idx["fixtures"]:
            models.append((Path(f["file"]).stem, args.fixtures.parent / f["file"]))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, path in models:
        for photo in photos:
            try:
                rec = predict_one(name, path, photo, args.out, versions)
                top = ", ".join(f"{d['name']} {d['conf']:.2f}" for d in rec["detections"][:6])
                print(
                    f"{name:28s} {photo.name:11s} in={rec['model_input'].get('shape')} n={rec['num_detections']:3d} {top}"
                )
            except Exception as e:
                print(f"{name:28s} {photo.name:11s} FAILED {type(e).__name__}: {e}")
                (args.out / f"{name}-{photo.stem}.error.txt").write_text(
                    f"{type(e).__name__}: {e}\n"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
