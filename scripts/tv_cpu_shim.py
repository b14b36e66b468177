"""Make PyPI's torchvision wheel importable next to a CPU-only torch wheel.

Why: PyPI's Linux torchvision wheel is a CUDA build; its ``torchvision/_C.so``
links ``libtorch_cuda.so``/``libc10_cuda.so``, which the ``+cpu`` torch wheel
does not ship.  torchvision then skips its C++ ops, but
``torchvision/_meta_registrations.py`` still calls
``torch.library.register_fake("torchvision::nms")`` (and ``::qnms``) unconditionally and the
import dies with ``RuntimeError: operator torchvision::nms does not exist``.

Fix: just before ``torchvision`` is first imported, define the
``torchvision::nms`` operator (same schema as torchvision's C++ one) with a
pure-torch CPU kernel -- Ultralytics' own ``TorchNMS.nms`` (documented there as
"matches torchvision behavior exactly").  Because the op keeps its name,
``torch.onnx.export`` still maps it to ONNX ``NonMaxSuppression`` through
torchvision's registered symbolic (used by Ultralytics' ``nms=True`` export).

Installed by a one-line ``tv_cpu_shim.pth`` in the venv's site-packages; it
costs nothing until torchvision is imported.  If torchvision's real ``_C``
library loads, the shim does nothing.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys

_LIB = None


def _define_nms():
    global _LIB
    import os

    import torch

    # If torchvision's own compiled ops load, leave everything alone.
    try:
        spec = importlib.machinery.PathFinder.find_spec("torchvision")
        if spec and spec.submodule_search_locations:
            so = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
            if os.path.exists(so):
                torch.ops.load_library(so)
                return
    except (OSError, ImportError):
        pass

    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

    def _nms_cpu(dets, scores, iou_threshold):
        from ultralytics.utils.nms import TorchNMS

        return TorchNMS.nms(dets, scores, float(iou_threshold))

    _LIB.impl("nms", _nms_cpu, "CPU")
    # torchvision also registers a fake kernel for its quantized NMS; define the
    # schema only (calling it raises NotImplementedError: no kernel).
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


class _Hook(importlib.abc.MetaPathFinder):
    """Defines the ops before ``torchvision`` runs, then patches ``torchvision.ops.boxes``
    (whose ``nms`` calls ``_assert_has_ops()``, false without ``_C``) right after it runs."""

    done = False

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            if not self.done:
                self.done = True
                _define_nms()
            return None
        if name == "torchvision.ops.boxes" and _LIB is not None:
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return None
            orig_exec = spec.loader.exec_module

            def exec_module(module, _orig=orig_exec):
                _orig(module)
                module._assert_has_ops = lambda: None  # nms/batched_nms use our torchvision::nms

            spec.loader.exec_module = exec_module
            return spec
        return None


if "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _Hook())
