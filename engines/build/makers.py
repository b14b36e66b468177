"""Making the FP32 and FP16 variant graphs (INT8 has its own maker in ``engines.build.int8``).

Each maker takes the variant's record as drafted by the builder and returns it with the graph
it wrote (``artifact``, a file beside the manifest) and the nodes it kept in float.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from engines.artifacts.record import KeptFloat, VariantRecord
from engines.build.fp16 import to_fp16
from engines.build.int8.graph import HEAD_REASON, decode_head


def make_fp32(source: Path, out_dir: Path, draft: VariantRecord) -> VariantRecord:
    target = out_dir / "fp32.onnx"
    shutil.copyfile(source, target)
    return draft.model_copy(update={"artifact": target.name})


def make_fp16(source: Path, out_dir: Path, draft: VariantRecord) -> VariantRecord:
    model = onnx.load(str(source))
    head = decode_head(model)
    target = out_dir / "fp16.onnx"
    onnx.save(to_fp16(model, keep_float=head), str(target))
    kept = tuple(KeptFloat(node=n, reason=HEAD_REASON) for n in head)
    return draft.model_copy(update={"artifact": target.name, "kept_float": kept})
