#!/usr/bin/env python3
"""Export REAL Ultralytics ONNX files to use as test fixtures for detect-serve.

Every file is produced by Ultralytics' own exporter (``YOLO(...).export(format="onnx", ...)``),
from Ultralytics' own model YAMLs (``yolov8n.yaml``, ``yolov5n.yaml`` -- the anchor-free "u"
form, the only YOLOv5 head this Ultralytics ships --, ``yolo11n.yaml``, ``yolov10n.yaml``,
``yolo26n.yaml``).  Only two things differ from a user's export of a trained model:

* the ``n`` entry of each YAML's ``scales`` table is shrunk (depth/width/max_channels, see
  ``SCALE_N``) so each file stays around or under 1.5 MB; the graph structure (backbone blocks,
  Detect/v10Detect head, DFL, anchors/strides, output layout) is unchanged;
* the weights are random (seeded).  Conv weights are Kaiming-normal so activations keep their
  spread through the network, and the head's last convs get random biases so that a realistic
  handful of anchors score above conf=0.25 (with Ultralytics' own init nothing would: its class
  bias prior gives scores ~1e-4 on untrained weights).  Do not expect sensible boxes, only
  well-formed ones.

Forms (see ``FIXTURES``): ``static`` (default export: batch 1, 640x640), ``dynamic``
(``dynamic=True``: batch/height/width symbolic), ``batch4`` (static batch 4), ``half``
(``half=True``), ``nms`` (``nms=True``: NMS inside the graph, output (B, 300, 6)),
``nms-dynamic``, ``rect`` (non-square ``imgsz=[320, 480]``), ``e2e`` (``nms=False`` on the
NMS-free YOLOv10/YOLO26 heads: one-to-one head + TopK in the graph, output (B, 300, 6)).

Every fixture of one family comes from the same weights, so e.g. the static, dynamic, half and
nms files of YOLOv8 must agree on the same input (up to FP16 error for ``half``).

Determinism: torch is seeded per family; the script re-executes itself with PYTHONHASHSEED=0
(onnxslim's output for dynamic graphs depends on set iteration order); the only time-dependent
bytes Ultralytics writes (the ``date`` metadata prop) are overwritten with a fixed value
(``FIXED_DATE``; pass ``--keep-date`` to keep the real one).  Rerunning with the same
ultralytics/torch/onnx/onnxslim versions reproduces the files byte for byte (sha256 in
fixtures.json).

Output: ``OUT/<family>-<form>.onnx`` plus ``OUT/fixtures.json`` (per file: family, form, source
YAML and scale override, nc, imgsz, batch, export kwargs, opset/IR version, inputs/outputs with
names, shapes (symbolic dims as strings) and dtypes read back with the ``onnx`` package, the
Ultralytics metadata props, notable ops, warnings Ultralytics logged, an onnxruntime smoke run,
sha256/size, and tool versions), and a ``refused`` list of forms the exporter rejected or
silently changed.

Usage::

    python export_ultralytics_fixtures.py --out fixtures            # all fixtures
    python export_ultralytics_fixtures.py --out fixtures --only yolov8-static yolo26-e2e
    python export_ultralytics_fixtures.py --list

Needs: ultralytics, torch (CPU is fine), onnx, onnxslim, onnxruntime.  On a CPU-only torch wheel
with PyPI's (CUDA) torchvision wheel, ``import torchvision`` fails; see tv_cpu_shim.py.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

FIXED_DATE = "2000-01-01T00:00:00+00:00"

# Shrunk 'n' scale: [depth_multiple, width_multiple, max_channels].  Ultralytics' own 'n' is
# [0.33, 0.25, 1024] (v8/v5/v10) or [0.50, 0.25, 1024] (11/26).  parse_model computes a layer's
# channels as make_divisible(min(c, max_channels) * width, 8), so this gives 8 channels in every
# backbone/neck layer.  What is left is the Detect head, which dominates the size: its box branch has
# max(16, ch/4, 4*reg_max) = 64 channels (reg_max=16; YOLO26 has reg_max=1 -> 16) and its class
# branch max(ch, min(nc, 100)) = 80 channels for nc=80.  --nc 8 roughly halves the v8/v5u/v10 files.
SCALE_N = {
    "yolov8": [0.33, 0.125, 64],
    "yolov5u": [0.33, 0.125, 64],
    "yolo11": [0.50, 0.125, 64],
    "yolov10": [0.33, 0.125, 64],
    "yolo26": [0.50, 0.125, 64],
}
YAML = {
    "yolov8": "yolov8n.yaml",
    "yolov5u": "yolov5n.yaml",  # cfg/models/v5/yolov5.yaml = anchor-free YOLOv5u (v8-style Detect head)
    "yolo11": "yolo11n.yaml",
    "yolov10": "yolov10n.yaml",
    "yolo26": "yolo26n.yaml",
}

# name -> (family, form, nc, export kwargs).  Export kwargs are passed verbatim to model.export().
FIXTURES: dict[str, tuple[str, str, int, dict]] = {
    # --- YOLOv8: every form -------------------------------------------------------------------
    "yolov8-static": ("yolov8", "static", 80, {}),
    "yolov8-dynamic": ("yolov8", "dynamic", 80, {"dynamic": True}),
    "yolov8-batch4": ("yolov8", "batch4", 80, {"batch": 4, "imgsz": 320}),
    "yolov8-half": ("yolov8", "half", 80, {"half": True}),
    # EMULATED: same CPU half export, but Ultralytics' own float16 conversion call is made with
    # keep_io_types=False, giving the FP16 *inputs/outputs* that a CUDA export (device=0, which traces
    # model.half()) produces.  No GPU here; see "emulation" in fixtures.json.
    "yolov8-half-fp16io": ("yolov8", "half-fp16io", 80, {"half": True, "_emulate_fp16_io": True}),
    "yolov8-nms": ("yolov8", "nms", 80, {"nms": True}),
    "yolov8-nms-dynamic": ("yolov8", "nms-dynamic", 80, {"nms": True, "dynamic": True, "batch": 2}),
    "yolov8-rect": ("yolov8", "rect", 80, {"imgsz": [320, 480]}),
    # --- YOLOv5u --------------------------------------------------------------------------------
    "yolov5u-static": ("yolov5u", "static", 80, {}),
    "yolov5u-dynamic": ("yolov5u", "dynamic", 80, {"dynamic": True}),
    # --- YOLO11 ---------------------------------------------------------------------------------
    "yolo11-static": ("yolo11", "static", 80, {}),
    "yolo11-dynamic": ("yolo11", "dynamic", 80, {"dynamic": True}),
    "yolo11-nms": ("yolo11", "nms", 80, {"nms": True}),
    "yolo11-rect": ("yolo11", "rect", 80, {"imgsz": [480, 320]}),
    # --- YOLOv10 (NMS-free head) ------------------------------------------------------------------
    "yolov10-static": (
        "yolov10",
        "static",
        80,
        {},
    ),  # nms=None default: one-to-many branch, raw (1,84,N)
    "yolov10-e2e": ("yolov10", "e2e", 80, {"nms": False}),
    # --- YOLO26 (NMS-free, DFL-free head) ---------------------------------------------------------
    "yolo26-static": (
        "yolo26",
        "static",
        80,
        {},
    ),  # nms=None default: one-to-many branch, raw (1,84,N)
    "yolo26-e2e": ("yolo26", "e2e", 80, {"nms": False}),
    "yolo26-e2e-dynamic": ("yolo26", "e2e-dynamic", 80, {"nms": False, "dynamic": True}),
    "yolo26-nms": ("yolo26", "nms", 80, {"nms": True}),
}

# Attempts that are expected to be refused or changed by the exporter; recorded, not kept.
PROBES: dict[str, tuple[str, int, dict]] = {
    "yolov8-half-dynamic": ("yolov8", 80, {"half": True, "dynamic": True}),
    # int8=True (quantize=8) is not probed: it needs calibration images and falls back to downloading
    # coco8.zip ("ConnectionError: Download failure for https://ultralytics.com/assets/coco8.zip").
    "yolov8-opset10-nms": ("yolov8", 80, {"nms": True, "opset": 10}),
    "yolov8-half-device-cpu-torchscript": ("yolov8", 80, {"format": "torchscript", "half": True}),
    "yolov8-end2end-true": ("yolov8", 80, {"end2end": True}),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def coco_names(nc: int) -> dict[int, str]:
    """Class names: COCO's 80 (Ultralytics' coco.yaml) for nc=80, else the first nc of them / class<i>."""
    import ultralytics
    import yaml as pyyaml

    coco = Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco.yaml"
    names = pyyaml.safe_load(coco.read_text())["names"]
    return {i: names.get(i, f"class{i}") for i in range(nc)}


def _calibration_batch(seed: int, size: int = 640):
    """Deterministic calibration input: Ultralytics' own bus.jpg and zidane.jpg (shipped in the
    ultralytics package, ultralytics/assets/) letterboxed like predict does, plus one synthetic
    image of smooth colour blobs."""
    import cv2
    import numpy as np
    import torch
    import torch.nn.functional as F
    import ultralytics
    from ultralytics.data.augment import LetterBox

    ims = []
    for name in ("bus.jpg", "zidane.jpg"):
        img = cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / name))
        if img is None:
            continue
        lb = LetterBox((size, size), auto=False, stride=32)(image=img)
        ims.append(
            torch.from_numpy(np.ascontiguousarray(lb[..., ::-1].transpose(2, 0, 1))).float() / 255
        )
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 3, 6, 6), generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    ims.append((x + 0.08 * torch.randn((1, 3, size, size), generator=g)).clamp(0, 1)[0])
    return torch.stack(ims)


def _r(x: float, nd: int = 3) -> float:
    """Round calibration constants so tiny float differences (thread counts, BLAS) cannot change the bytes."""
    return float(f"{x:.{nd}g}")


def randomize_weights(model, seed: int, target_frac: float = 0.003) -> dict:
    """Seeded random weights that give a realistic, non-degenerate output spread (see module doc).

    1. Every nn.Conv2d (except DFL's fixed arange projection) gets Kaiming-normal weights, zero bias;
       BatchNorm layers get mild random statistics (they are fused into the convs on export).
    2. On a fixed synthetic image, the last conv of each box/class branch (one-to-many and, for
       YOLOv10/YOLO26, one-to-one) is rescaled so its logits have a set std (class 1.5, box 1.0),
       and the class biases are set so that about ``target_frac`` of anchors have a best-class
       score above 0.25 (median over the calibration images), with a small per-class spread.  For DFL-free heads (reg_max=1, YOLO26)
       the box logits get std 0.5 and bias +3 so the raw ltrb distances (in strides) are mostly
       positive, like a trained model's.
    """
    import math

    import torch
    from torch import nn
    from ultralytics.nn.modules import DFL

    g = torch.Generator().manual_seed(seed)
    dfl_convs = {id(m.conv) for m in model.modules() if isinstance(m, DFL)}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in dfl_convs:
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.05)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g) * 0.5)
                m.weight.copy_(1.0 + torch.randn(m.weight.shape, generator=g) * 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)

    head = model.model[-1]
    reg_max = int(getattr(head, "reg_max", 16))
    branches = []
    for attr_box, attr_cls in (("cv2", "cv3"), ("one2one_cv2", "one2one_cv3")):
        box, cls = getattr(head, attr_box, None), getattr(head, attr_cls, None)
        if box is not None and cls is not None:
            branches.append((attr_cls, [b[-1] for b in box], [c[-1] for c in cls]))

    acts: dict[int, list] = {}
    hooks = [
        conv.register_forward_hook(
            lambda mod, i, o: acts.setdefault(id(mod), []).append(o.detach())
        )
        for _, boxes, clss in branches
        for conv in boxes + clss
    ]
    was_training = model.training
    model.eval()
    x = _calibration_batch(seed)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    report = {}
    with torch.no_grad():
        for name, boxes, clss in branches:
            # box branch: logit std 1.0 (DFL bins) / +2.5 mean distance (reg_max=1)
            for conv in boxes:
                o = acts[id(conv)][0]
                conv.weight.mul_(_r(1.0 / max(float(o.std()), 1e-6)))
                if reg_max > 1:
                    conv.bias.copy_(
                        torch.randn(conv.bias.shape, generator=g).mul_(0.5).round_(decimals=3)
                    )
                else:
                    conv.weight.mul_(0.5)
                    conv.bias.fill_(3.0)
            # class branch: logit std 1.5, then a common bias for ~target_frac anchors > 0.25
            best = []
            for conv in clss:
                o = acts[id(conv)][0]
                k = _r(1.5 / max(float(o.std()), 1e-6))
                conv.weight.mul_(k)
                spread = torch.randn(conv.bias.shape, generator=g).mul_(0.3).round_(decimals=3)
                conv.bias.copy_(spread)
                logits = o * k + spread.view(1, -1, 1, 1)  # bias was zero during calibration
                best.append(logits.amax(1).flatten(1))  # (images, anchors of this level)
            best = torch.cat(best, 1)
            # per-image quantile, median over images: robust to one image dominating the tail
            q = float(torch.quantile(best, 1.0 - target_frac, dim=1).median())
            b0 = _r(math.log(0.25 / 0.75) - q)
            for conv in clss:
                conv.bias.add_(b0)
            report[name] = {"cls_bias_offset": b0}
    return report


def build_model(family: str, nc: int, workdir: Path):
    """YOLO model from Ultralytics' YAML with the shrunk 'n' scale, nc classes, seeded weights."""
    import yaml as pyyaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    src = YAML[family]
    d = yaml_model_load(src)  # Ultralytics' packaged YAML (resolved from ultralytics/cfg/models)
    d.pop("yaml_file", None)
    d.pop("scale", None)
    d["nc"] = nc
    d["scales"] = {"n": list(SCALE_N[family])}
    ydir = workdir / f"{family}-nc{nc}"
    ydir.mkdir(parents=True, exist_ok=True)
    ypath = ydir / src  # keep the file name: Ultralytics guesses the scale ('n') from it
    ypath.write_text(pyyaml.safe_dump(d, sort_keys=False))
    seed = zlib.crc32(f"{family}-nc{nc}".encode())
    seed_everything(seed)
    yolo = YOLO(str(ypath), task="detect")
    calib = randomize_weights(yolo.model, seed)
    yolo.model.names = coco_names(nc)
    yolo.model.eval()
    return yolo, {
        "yaml": src,
        "scales_n": list(SCALE_N[family]),
        "seed": seed,
        "calibration": calib,
    }


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def onnx_info(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))

    def vi(v):
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {
            "name": v.name,
            "shape": dims,
            "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(),
        }

    init_names = {i.name for i in m.graph.initializer}
    ops = sorted(
        {n.op_type for n in m.graph.node}
    )  # top-level graph only (NMS loop bodies are unrolled)
    init_dtypes = sorted(
        {onnx.TensorProto.DataType.Name(i.data_type).lower() for i in m.graph.initializer}
    )
    return {
        "ir_version": m.ir_version,
        "opset": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "inputs": [vi(v) for v in m.graph.input if v.name not in init_names],
        "outputs": [vi(v) for v in m.graph.output],
        "metadata": {p.key: p.value for p in m.metadata_props},
        "ops": ops,
        "notable_ops": [
            o
            for o in ops
            if o in ("NonMaxSuppression", "TopK", "Loop", "Cast", "Softmax", "Resize")
        ],
        "initializer_dtypes": init_dtypes,
        "nodes": len(m.graph.node),
    }


def _photo_batch(n: int, h: int, w: int):
    """bus.jpg / zidane.jpg (from the ultralytics package) letterboxed to h x w like predict (auto=False,
    centre pad 114), RGB, CHW, float32 in [0, 1]; alternating to fill a batch of n."""
    import cv2
    import numpy as np
    import ultralytics
    from ultralytics.data.augment import LetterBox

    ims = []
    for i in range(n):
        name = ("bus.jpg", "zidane.jpg")[i % 2]
        img = cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / name))
        lb = LetterBox((h, w), auto=False, stride=32)(image=img)
        ims.append(lb[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.ascontiguousarray(np.stack(ims))


def ort_smoke(path: Path, info: dict) -> dict:
    """Run onnxruntime on bus.jpg/zidane.jpg letterboxed to the input size (symbolic batch -> 2,
    symbolic height x width -> 480 x 640), and for nms-dynamic files also at batch 1 and 3."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    dims = [d if isinstance(d, int) else None for d in inp.shape]
    batches = [dims[0] or 2]
    if dims[0] is None and "NonMaxSuppression" in info["ops"]:
        batches = [1, 2, 3]
    runs = []
    for b in batches:
        h, w = dims[2] or 480, dims[3] or 640
        x = _photo_batch(b, h, w).astype(dtype)
        t = time.perf_counter()
        outs = sess.run(None, {inp.name: x})
        run = {
            "input": "bus/zidane letterboxed",
            "input_shape": list(x.shape),
            "input_type": inp.type,
            "seconds": round(time.perf_counter() - t, 4),
            "outputs": [],
        }
        for o, y in zip(sess.get_outputs(), outs):
            r = {"name": o.name, "shape": list(y.shape), "dtype": str(y.dtype)}
            y = y.astype(np.float32)
            if y.ndim == 3 and y.shape[-1] == 6:  # (B, max_det, [x1, y1, x2, y2, score, class])
                r["rows_with_score>0_per_image"] = [int(v) for v in (y[..., 4] > 0).sum(1)]
                r["rows_with_score>=0.25_per_image"] = [int(v) for v in (y[..., 4] >= 0.25).sum(1)]
            elif y.ndim == 3:  # (B, 4 + nc, anchors) raw: cx, cy, w, h, class scores
                r["anchors_with_best_score>0.25_per_image"] = [
                    int(v) for v in (y[:, 4:, :].max(1) > 0.25).sum(1)
                ]
            run["outputs"].append(r)
        runs.append(run)
    return {"runs": runs}


def export_one(yolo, kwargs: dict, workdir: Path, keep_date: bool):
    """Run model.export(format='onnx', **kwargs) in workdir; return (path|None, warnings, error).

    ``_emulate_fp16_io=True`` (not an Ultralytics argument) makes the exporter's CPU FP16 step
    ``onnxruntime.transformers.float16.convert_float_to_float16(model, keep_io_types=True)``
    run with ``keep_io_types=False`` instead, so the graph's input/output become float16.
    """
    from ultralytics.utils import LOGGER

    kwargs = dict(kwargs)
    emulate_fp16_io = kwargs.pop("_emulate_fp16_io", False)
    patch = contextlib.nullcontext()
    if emulate_fp16_io:
        from unittest import mock

        from onnxruntime.transformers import float16

        orig = float16.convert_float_to_float16

        def _fp16_io(model, *a, **k):
            k["keep_io_types"] = False
            return orig(model, *a, **k)

        patch = mock.patch.object(float16, "convert_float_to_float16", _fp16_io)

    cap = _Capture()
    LOGGER.addHandler(cap)
    buf = io.StringIO()
    err = None
    out = None
    cwd = os.getcwd()
    try:
        os.chdir(workdir)
        kw = {"format": "onnx", **kwargs}
        with contextlib.redirect_stdout(buf), patch:
            out = yolo.export(**kw)
        out = Path(out).resolve() if out else None
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
        traceback.print_exc(file=buf)
    finally:
        os.chdir(cwd)
        LOGGER.removeHandler(cap)
    if out is not None and out.suffix == ".onnx" and not keep_date:
        import onnx

        m = onnx.load(str(out))
        for p in m.metadata_props:
            if p.key == "date":
                p.value = FIXED_DATE
        onnx.save(m, str(out))
    return out, cap.records, err


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import ultralytics

    v = {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0],
    }
    try:
        import onnxslim

        v["onnxslim"] = onnxslim.__version__
    except ImportError:
        v["onnxslim"] = None
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out", type=Path, default=Path("fixtures"), help="output directory (default: ./fixtures)"
    )
    ap.add_argument("--only", nargs="*", help="fixture names to (re)build; default all")
    ap.add_argument("--no-probes", action="store_true", help="skip the expected-refusal probes")
    ap.add_argument(
        "--keep-date", action="store_true", help="keep Ultralytics' export timestamp in metadata"
    )
    ap.add_argument("--list", action="store_true", help="list fixture names and exit")
    ap.add_argument(
        "--nc",
        type=int,
        default=None,
        help="override the class count of every fixture (default: 80, COCO names)",
    )
    args = ap.parse_args(argv)

    # onnxslim's shape inference writes a hash-order-dependent amount of duplicate value_info for
    # dynamic graphs (same nodes and weights, 1.7-2.5 MB files): pin the hash seed for byte-identical reruns.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(
            sys.executable,
            [
                sys.executable,
                os.path.abspath(__file__),
                *(argv if argv is not None else sys.argv[1:]),
            ],
        )

    if args.list:
        for k, (fam, form, nc, kw) in FIXTURES.items():
            print(f"{k:24s} {fam:8s} {form:12s} nc={nc:<3d} {kw}")
        return 0

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "True")
    # keep Ultralytics' settings.json (it writes one on import) out of ~/.config
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    from ultralytics.utils import SETTINGS

    with contextlib.suppress(Exception):
        SETTINGS.update({"sync": False})  # no analytics attempts

    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = args.only or list(FIXTURES)
    unknown = [n for n in names if n not in FIXTURES]
    if unknown:
        ap.error(f"unknown fixture(s): {unknown}; see --list")

    index_path = out_dir / "fixtures.json"
    index = json.loads(index_path.read_text()) if (args.only and index_path.exists()) else {}
    files = {f["file"]: f for f in index.get("fixtures", [])}
    refused = {r["name"]: r for r in index.get("refused", [])}
    vers = versions()

    models = {}
    with tempfile.TemporaryDirectory(prefix="ultra-fixtures-") as tmp:
        tmp = Path(tmp)

        def get_model(family, nc):
            if (family, nc) not in models:
                models[(family, nc)] = build_model(family, nc, tmp)
            return models[(family, nc)]

        for name in names:
            family, form, nc, kw = FIXTURES[name]
            nc = args.nc or nc
            yolo, src = get_model(family, nc)
            wd = tmp / name
            wd.mkdir()
            print(f"[{name}] export {kw}", flush=True)
            path, warns, err = export_one(yolo, kw, wd, args.keep_date)
            if err or path is None or not path.exists():
                print(f"[{name}] FAILED: {err}", flush=True)
                refused[name] = {
                    "name": name,
                    "family": family,
                    "export_kwargs": kw,
                    "error": err,
                    "warnings": warns,
                }
                continue
            dst = out_dir / f"{name}.onnx"
            shutil.move(str(path), dst)
            info = onnx_info(dst)
            smoke = ort_smoke(dst, info)
            meta = info["metadata"]
            entry = {
                "file": dst.name,
                "family": family,
                "form": form,
                "source_yaml": src["yaml"],
                "scales_n_override": src["scales_n"],
                "seed": src["seed"],
                "weights": "random (seeded, calibrated; see randomize_weights)",
                "nc": nc,
                "imgsz": json.loads(meta.get("imgsz", "null")),
                "batch": int(meta.get("batch", 1)),
                "stride": int(meta.get("stride", 32)),
                "end2end": meta.get("end2end") == "True",
                "export_kwargs": {
                    "format": "onnx",
                    **{k: v for k, v in kw.items() if not k.startswith("_")},
                },
                **(
                    {
                        "emulation": "CPU half export with Ultralytics' float16.convert_float_to_float16 called "
                        "with keep_io_types=False (Ultralytics passes True on CPU): float16 input/output like a "
                        "CUDA half export; the graph body is the CPU-path FP16 conversion, not a half-precision trace."
                    }
                    if kw.get("_emulate_fp16_io")
                    else {}
                ),
                "size_bytes": dst.stat().st_size,
                "sha256": sha256(dst),
                **{
                    k: info[k]
                    for k in (
                        "ir_version",
                        "opset",
                        "producer",
                        "inputs",
                        "outputs",
                        "notable_ops",
                        "initializer_dtypes",
                        "nodes",
                    )
                },
                "metadata": meta,
                "ultralytics_warnings": warns,
                "ort_smoke": smoke,
                "versions": vers,
            }
            files[dst.name] = entry
            refused.pop(name, None)
            print(
                f"[{name}] ok {dst.stat().st_size / 1e6:.2f} MB in={info['inputs']} out={info['outputs']}",
                flush=True,
            )
            if warns:
                print(f"[{name}] warnings: {warns}", flush=True)

        if not args.no_probes and not args.only:
            for name, (family, nc, kw) in PROBES.items():
                yolo, _ = get_model(family, args.nc or nc)
                wd = tmp / name
                wd.mkdir()
                print(f"[probe {name}] export {kw}", flush=True)
                path, warns, err = export_one(yolo, kw, wd, args.keep_date)
                rec = {
                    "name": name,
                    "family": family,
                    "export_kwargs": {"format": "onnx", **kw},
                    "error": err,
                    "warnings": warns,
                }
                if path is not None and path.exists() and path.suffix == ".onnx":
                    info = onnx_info(path)
                    rec["result"] = {
                        k: info[k] for k in ("opset", "inputs", "outputs", "initializer_dtypes")
                    }
                elif path is not None:
                    rec["result"] = {"file": path.name}
                print(f"[probe {name}] error={err} warnings={warns}", flush=True)
                refused[name] = rec

    index = {
        "generator": "export_ultralytics_fixtures.py",
        "versions": vers,
        "fixed_date": None if args.keep_date else FIXED_DATE,
        "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
        "nc_override": args.nc,
        "fixtures": [files[k] for k in sorted(files)],
        "refused": [refused[k] for k in sorted(refused)],
    }
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {index_path} ({len(files)} fixtures, {len(refused)} refused/probes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
