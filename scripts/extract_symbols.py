#!/usr/bin/env python3
"""Record the attribute names that TensorRT's and cuda-python's Python bindings expose, without a
GPU, without CUDA and without TensorRT's libraries, so tests can check the code against the APIs.

What it does (rerun it when a pin moves; it rewrites ``tests/data/trt_symbols.json``):

1. ``pip download --no-deps`` the binding wheels for this interpreter (``tensorrt-cu12-bindings``,
   ``tensorrt-cu13-bindings``, ``cuda-bindings`` + ``cuda-pathfinder``, ``nvidia-ml-py``). These
   are real wheels on PyPI; only ``tensorrt-cu1x-libs`` (libnvinfer & co.) is a stub there.
2. TensorRT: ``tensorrt_bindings/tensorrt.so`` is a pybind11 module that links
   ``libnvinfer.so.N``, ``libnvinfer_plugin.so.N`` and ``libnvonnxparser.so.N`` but calls into them
   only through a handful of C entry points (``createInferBuilder_INTERNAL``, ``getPluginRegistry``,
   ...); everything else goes through C++ vtables. The script reads the ``.so``'s ELF dynamic
   section (pure Python, no binutils), compiles one tiny stub library per ``NEEDED`` TensorRT
   library in which every such entry point returns 0/NULL (needs a C compiler, ``cc``), and then
   *imports* the module in a subprocess with those stubs on ``LD_LIBRARY_PATH``. Module
   initialisation only registers classes, so ``dir()`` then gives the exact names, per class.
   Nothing is executed that needs a GPU; calling any TensorRT factory would return None.
   Without a C compiler, ``--method strings`` falls back to the identifier-like strings embedded in
   the ``.so`` (pybind11 keeps every attribute name as a C string): a flat superset, no class
   membership, so it can show a name exists but not that it was removed.
3. cuda-python: ``cuda.bindings.runtime`` (cudart) is a Cython module that loads libcudart lazily,
   so it imports on a machine without CUDA; ``dir()`` gives its names.
4. nvidia-ml-py: ``pynvml.py`` is pure Python; its ``nvml*`` function names are read with ``ast``.
5. A self-check asserts names known to exist (``execute_async_v3``, ``set_tensor_address``, ...)
   and names known to be removed in TensorRT 11 (``BuilderFlag.FP16``/``INT8``, the INT8
   calibrators), so a broken extraction fails loudly instead of writing an empty file.

Usage::

    python scripts/extract_symbols.py                   # default pins -> tests/data/...json
    python scripts/extract_symbols.py --resolve-latest  # newest 10.x/11.x/12.x/13.x on the index
    python scripts/extract_symbols.py --all-classes     # every TensorRT class, not just listed
    python scripts/extract_symbols.py --signatures sig.json  # also signatures + enum values
    python scripts/extract_symbols.py --method strings  # no C compiler: flat TensorRT name sets

Output (names only, sorted; one list per line)::

    {"tensorrt": {"10": {"package", "version", "module": [...], "classes": {"Builder": [...]}},
                  "11": {...}},
     "cudart":   {"12": {"package", "version", "module": [...], "classes": {...},
                         "legacy_cuda_cudart": bool}, "13": {...}},
     "pynvml":   {"12": {"package", "functions": [...]}, "13": {...}}}

Linux x86-64 only as written (ELF64 LE, manylinux wheels for this interpreter). Wheels are cached
in ``--wheel-dir`` (default: $TMPDIR/trt-symbols-wheels, outside the repository).
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Pins: the newest release of each line on PyPI when this was written. The key is the major
# version the project cares about (TensorRT 10/11, CUDA 12/13). The cu12 and cu13 bindings of one
# TensorRT release are byte-identical (only the libs differ), so one per TensorRT major suffices.
TRT_PINS = {
    "10": "tensorrt-cu12-bindings==10.16.1.11",
    "11": "tensorrt-cu13-bindings==11.4.0.106",
}
CUDART_PINS = {
    "12": "cuda-bindings==12.9.10",
    "13": "cuda-bindings==13.5.0",
}
NVML_PINS = {
    "12": "nvidia-ml-py==12.575.51",
    "13": "nvidia-ml-py==13.615.71",
}
PATHFINDER = "cuda-pathfinder"  # cuda-bindings' one runtime dependency (pure Python)

# Classes whose members are recorded (the ones the project uses or would use, and the ones whose
# absence in 11 matters). Absent classes are simply missing from "classes"; "module" says so too.
TRT_CLASSES = [
    "Builder",
    "IBuilderConfig",
    "BuilderFlag",
    "NetworkDefinitionCreationFlag",
    "INetworkDefinition",
    "ITensor",
    "ILayer",
    "OnnxParser",
    "IParserError",
    "ErrorCode",
    "Runtime",
    "ICudaEngine",
    "IExecutionContext",
    "ExecutionContextAllocationStrategy",
    "IRuntimeConfig",
    "IOptimizationProfile",
    "ITimingCache",
    "IHostMemory",
    "Logger",
    "ILogger",
    "TensorIOMode",
    "TensorLocation",
    "DataType",
    "MemoryPoolType",
    "ProfilingVerbosity",
    "PreviewFeature",
    "HardwareCompatibilityLevel",
    "Dims",
    "IInt8Calibrator",
    "IInt8EntropyCalibrator2",
    "IInt8MinMaxCalibrator",
    "CalibrationAlgoType",
]
CUDART_CLASSES = ["cudaDeviceProp", "cudaMemcpyKind", "cudaError_t", "cudaStream_t", "cudaEvent_t"]

# (version key, "Class.member" or "name", expected present?) - the extraction's self-check.
TRT_EXPECT = [
    *[
        (v, name, True)
        for v in ("10", "11")
        for name in (
            "Builder",
            "Runtime",
            "OnnxParser",
            "Logger",
            "nptype",
            "__version__",
            "Builder.create_network",
            "Builder.create_builder_config",
            "Builder.create_optimization_profile",
            "Builder.build_serialized_network",
            "IBuilderConfig.create_timing_cache",
            "IBuilderConfig.set_timing_cache",
            "IBuilderConfig.set_memory_pool_limit",
            "IBuilderConfig.add_optimization_profile",
            "ICudaEngine.num_io_tensors",
            "ICudaEngine.get_tensor_name",
            "ICudaEngine.get_tensor_profile_shape",
            "ICudaEngine.create_execution_context",
            "IExecutionContext.execute_async_v3",
            "IExecutionContext.set_tensor_address",
            "IExecutionContext.set_input_shape",
            "IExecutionContext.set_optimization_profile_async",
            "ITimingCache.serialize",
            "TensorIOMode.INPUT",
            "MemoryPoolType.WORKSPACE",
            "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
            "Logger.WARNING",
        )
    ],
    ("10", "BuilderFlag.FP16", True),
    ("10", "BuilderFlag.INT8", True),
    ("10", "IInt8EntropyCalibrator2", True),
    ("10", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH", True),
    ("11", "BuilderFlag.FP16", False),
    ("11", "BuilderFlag.INT8", False),
    ("11", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", False),
    ("11", "IInt8EntropyCalibrator2", False),
    ("11", "ILayer.precision", False),
    ("11", "ILayer.set_output_type", False),
    ("11", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH", False),
    ("10", "IExecutionContext.execute_async_v2", False),  # removed in 10.0
    ("10", "ICudaEngine.num_bindings", False),  # removed in 10.0
]
CUDART_EXPECT = [
    (v, name, True)
    for v in ("12", "13")
    for name in (
        "cudaMalloc",
        "cudaMallocHost",
        "cudaMemcpyAsync",
        "cudaStreamCreate",
        "cudaStreamSynchronize",
        "cudaStreamDestroy",
        "cudaFree",
        "cudaFreeHost",
        "cudaGetDevice",
        "cudaGetDeviceProperties",
        "cudaMemcpyKind.cudaMemcpyHostToDevice",
        "cudaError_t.cudaSuccess",
        "cudaDeviceProp.name",
        "cudaDeviceProp.major",
    )
]
NVML_EXPECT = [
    (v, name, True)
    for v in ("12", "13")
    for name in (
        "nvmlInit",
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetMemoryInfo",
    )
]


# ------------------------------------------------------------------------------------------------
# wheels


def _pip(*args: str) -> str:
    cmd = [sys.executable, "-m", "pip", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def latest(project: str, major: str) -> str:
    """Newest ``major.*`` release of ``project`` on the index (``pip index versions``)."""
    out = _pip("index", "versions", project)
    match = re.search(r"Available versions: (.*)", out)
    if not match:
        raise SystemExit(f"pip index versions {project}: no versions in {out!r}")
    for version in (v.strip() for v in match.group(1).split(",")):
        if version.split(".")[0] == major and not re.search(r"(a|b|rc|dev)\d", version):
            return f"{project}=={version}"
    raise SystemExit(f"{project}: no {major}.x release")


def fetch_wheel(spec: str, wheel_dir: Path) -> Path:
    """The wheel for ``spec`` for this interpreter and platform, downloaded once into wheel_dir."""
    name, _, version = spec.partition("==")
    stem = name.replace("-", "_")
    pattern = f"{stem}-{version}-*.whl" if version else f"{stem}-*.whl"
    found = sorted(wheel_dir.glob(pattern))
    if not found:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        _pip("download", "--no-deps", "--only-binary", ":all:", "--dest", str(wheel_dir), spec)
        found = sorted(wheel_dir.glob(pattern))
    if not found:
        raise SystemExit(f"no wheel for {spec} in {wheel_dir}")
    return found[-1]


def unpack(wheel: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(into)
    return into


SHT_DYNAMIC, SHT_DYNSYM, SHT_GNU_VERSYM = 6, 11, 0x6FFFFFFF  # ELF section types

# ------------------------------------------------------------------------------------------------
# ELF: the dynamic section's NEEDED entries and undefined symbols, pure Python (ELF64 LE)


def elf_dynamic(path: Path) -> tuple[list[str], list[tuple[str, bool, bool]]]:
    """(NEEDED libraries, [(undefined symbol, is_weak, has_version)]) of an ELF64 LE object."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit(f"{path}: not an ELF64 little-endian object")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(shnum):
        name, typ, _flags, _addr, off, size, link, _info, _align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, shoff + i * shentsize
        )
        sections.append((name, typ, off, size, link, entsize))

    def cstr(table_off: int, index: int) -> str:
        end = data.index(b"\0", table_off + index)
        return data[table_off + index : end].decode()

    by_type = {s[1]: s for s in sections}
    _, _, dyn_off, dyn_size, dyn_link, _ = by_type[SHT_DYNAMIC]
    dynstr_off = sections[dyn_link][2]
    needed = []
    for pos in range(dyn_off, dyn_off + dyn_size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            needed.append(cstr(dynstr_off, val))
    _, _, sym_off, sym_size, sym_link, sym_ent = by_type[SHT_DYNSYM]
    symstr_off = sections[sym_link][2]
    versym = by_type.get(SHT_GNU_VERSYM)
    undefined = []
    for i in range(sym_size // sym_ent):
        st_name, st_info, _other, st_shndx, _value, _size = struct.unpack_from(
            "<IBBHQQ", data, sym_off + i * sym_ent
        )
        if st_shndx != 0 or st_name == 0:
            continue
        has_version = False
        if versym is not None:
            (ver,) = struct.unpack_from("<H", data, versym[2] + 2 * i)
            has_version = (ver & 0x7FFF) > 1
        undefined.append((cstr(symstr_off, st_name), (st_info >> 4) == 2, has_version))
    return needed, undefined


def stub_libraries(so: Path, into: Path) -> Path:
    """Compile stand-ins for the TensorRT libraries ``so`` needs; return their folder."""
    needed, undefined = elf_dynamic(so)
    trt_libs = [n for n in needed if re.match(r"lib(nvinfer|nvonnxparser)", n)]
    if not trt_libs:
        raise SystemExit(f"{so}: links no TensorRT library? NEEDED={needed}")
    process = ctypes.CDLL(None)  # what the interpreter already resolves (libc, libpython, ...)
    entry_points = sorted(
        name
        for name, weak, versioned in undefined
        if not weak
        and not versioned
        and not name.startswith(("Py", "_Py"))
        and not hasattr(process, name)
    )
    if not entry_points:
        raise SystemExit(f"{so}: no TensorRT entry points found among its undefined symbols")
    source = into / "stub.c"
    source.write_text(
        "/* Stand-in for TensorRT's libraries: every C entry point returns 0/NULL. */\n"
        + "".join(f"long {name}(void) {{ return 0; }}\n" for name in entry_points)
    )
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not compiler:
        raise SystemExit("no C compiler (cc/gcc): rerun with --method strings")
    for lib in trt_libs:
        subprocess.run(
            [
                compiler,
                "-shared",
                "-fPIC",
                "-O0",
                f"-Wl,-soname,{lib}",
                "-o",
                str(into / lib),
                str(source),
            ],
            check=True,
        )
    return into


# ------------------------------------------------------------------------------------------------
# introspection in a subprocess (the stubs must be on LD_LIBRARY_PATH before the loader starts)

_DUMP = r"""
import importlib, inspect, json, sys, types
module = importlib.import_module(sys.argv[1])
classes, want_all, sig = json.loads(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
public = lambda obj: sorted(a for a in dir(obj) if not a.startswith("_"))
names = sorted(a for a in dir(module)
               if not a.startswith("_") and not isinstance(getattr(module, a), types.ModuleType))
if "__version__" in dir(module):
    names.append("__version__")
picked = [n for n in names if inspect.isclass(getattr(module, n))] if want_all else classes
out = {"version": str(getattr(module, "__version__", "")), "module": names, "classes": {},
       "signatures": {}}
for cls in picked:
    obj = getattr(module, cls, None)
    if obj is None or not inspect.isclass(obj):
        continue
    out["classes"][cls] = public(obj)
    members = getattr(obj, "__members__", None)  # pybind11 enums: values move between majors
    if sig and isinstance(members, dict):
        out["signatures"][cls + ".__values__"] = {k: int(v) for k, v in members.items()}
    if sig:
        for member in public(obj):
            doc = (getattr(getattr(obj, member, None), "__doc__", None) or "").strip()
            if "(" in doc.split("\n")[0] and callable(getattr(obj, member, None)):
                lines = [l for l in doc.split("\n") if l.startswith(member + "(")
                         or (l[:3].strip(". ").isdigit() and member + "(" in l)]
                out["signatures"][cls + "." + member] = lines or [doc.split("\n")[0]]
print(json.dumps(out))
"""


def introspect(
    module: str,
    path: Path,
    classes: list[str],
    *,
    all_classes: bool,
    signatures: bool,
    ld_path: Path | None = None,
) -> dict:
    env = dict(os.environ, PYTHONPATH=str(path), PYTHONNOUSERSITE="1")
    if ld_path is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(ld_path), os.environ.get("LD_LIBRARY_PATH", "")) if p
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _DUMP,
            module,
            json.dumps(classes),
            "1" if all_classes else "0",
            "1" if signatures else "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=path,
    )
    if proc.returncode != 0:
        raise SystemExit(f"importing {module} from {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{2,80}")


def strings_names(so: Path) -> list[str]:
    """Fallback: identifier-shaped NUL-terminated strings in the binary, and their suffixes (the
    linker merges string tails: "Builder" is stored as the end of "IBuilder"). A superset of the
    attribute names with no class membership: it can show a name present, never absent."""
    data = so.read_bytes()
    names = set()
    for chunk in data.split(b"\0"):
        if _IDENT.fullmatch(chunk):
            text = chunk.decode()
            names.update(text[i:] for i in range(len(text) - 1) if not text[i].isdigit())
    return sorted(names)


# ------------------------------------------------------------------------------------------------


def tensorrt(spec: str, work: Path, wheels: Path, args: argparse.Namespace) -> dict:
    root = unpack(fetch_wheel(spec, wheels), work / spec.replace("==", "-"))
    so = root / "tensorrt_bindings" / "tensorrt.so"
    if args.method == "strings":
        version = re.search(
            r'__version__ = "([^"]+)"', (root / "tensorrt_bindings" / "__init__.py").read_text()
        )
        # Names the package's __init__.py defines in Python (nptype, volume, ...) are not in the .so
        tree = ast.parse((root / "tensorrt_bindings" / "__init__.py").read_text())
        python_names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        python_names += [
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name)
        ]
        return {
            "package": spec,
            "version": version.group(1) if version else "",
            "method": "strings",
            "names": sorted(set(strings_names(so)) | set(python_names)),
        }
    stubs = stub_libraries(so, Path(tempfile.mkdtemp(dir=work)))
    info = introspect(
        "tensorrt_bindings",
        root,
        TRT_CLASSES,
        all_classes=args.all_classes,
        signatures=bool(args.signatures),
        ld_path=stubs,
    )
    return {"package": spec, **info}


def cudart(spec: str, work: Path, wheels: Path, args: argparse.Namespace) -> dict:
    root = unpack(fetch_wheel(spec, wheels), work / spec.replace("==", "-"))
    unpack(fetch_wheel(PATHFINDER, wheels), root)
    # Always imported: it needs no CUDA and no compiler (and Cython compresses its string table,
    # so a strings scan would miss names).
    info = introspect(
        "cuda.bindings.runtime",
        root,
        CUDART_CLASSES,
        all_classes=False,
        signatures=bool(args.signatures),
    )
    version = (root / "cuda" / "bindings" / "_version.py").read_text()
    match = re.search(r"""version\s*=\s*['"]([^'"]+)""", version)
    info["version"] = match.group(1) if match else spec.partition("==")[2]
    # `from cuda import cudart` (the pre-12.6 spelling) survives as a deprecated shim in 12.x only.
    info["legacy_cuda_cudart"] = any((root / "cuda").glob("cudart*.so"))
    return {"package": spec, **info}


def pynvml(spec: str, work: Path, wheels: Path) -> dict:
    root = unpack(fetch_wheel(spec, wheels), work / spec.replace("==", "-"))
    tree = ast.parse((root / "pynvml.py").read_text())
    functions = sorted(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.lower().startswith("nvml")
    )
    return {"package": spec, "functions": functions}


def lookup(table: dict, dotted: str) -> bool:
    if "names" in table:  # strings mode: flat set, last component only
        return dotted.split(".")[-1] in table["names"]
    if "." not in dotted:
        return dotted in table.get("module", table.get("functions", []))
    cls, member = dotted.split(".", 1)
    return member in table.get("classes", {}).get(cls, ())


def self_check(result: dict) -> list[str]:
    failures = []
    for section, expectations in (("tensorrt", TRT_EXPECT), ("cudart", CUDART_EXPECT)):
        for key, name, present in expectations:
            table = result[section].get(key)
            if table is None:
                continue
            if "names" in table and not present:
                continue  # a flat strings set cannot show an absence (docstrings mention old names)
            if lookup(table, name) != present:
                state = "present" if present else "absent"
                failures.append(f"{section} {key}: {name} expected {state}")
    for key, name, present in NVML_EXPECT:
        table = result["pynvml"].get(key)
        if table is not None and (name in table["functions"]) != present:
            failures.append(f"pynvml {key}: {name}")
    return failures


def dump_compact(obj: object, indent: int = 0) -> str:
    """JSON with one line per list: small diffs when a pin moves."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad} {json.dumps(k)}: {dump_compact(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    return json.dumps(obj, separators=(",", ":"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "trt_symbols.json")
    parser.add_argument(
        "--wheel-dir", type=Path, default=Path(tempfile.gettempdir()) / "trt-symbols-wheels"
    )
    parser.add_argument("--method", choices=["import", "strings"], default="import")
    parser.add_argument("--all-classes", action="store_true")
    parser.add_argument(
        "--signatures",
        type=Path,
        default=None,
        help="also write first docstring (signature) lines of recorded members",
    )
    parser.add_argument(
        "--resolve-latest",
        action="store_true",
        help="use the newest release of each major on the index, not the pins",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["tensorrt", "cudart", "pynvml"])
    args = parser.parse_args()

    trt_pins, cudart_pins, nvml_pins = dict(TRT_PINS), dict(CUDART_PINS), dict(NVML_PINS)
    if args.resolve_latest:
        trt_pins = {
            "10": latest("tensorrt-cu12-bindings", "10"),
            "11": latest("tensorrt-cu13-bindings", "11"),
        }
        cudart_pins = {m: latest("cuda-bindings", m) for m in cudart_pins}
        nvml_pins = {m: latest("nvidia-ml-py", m) for m in nvml_pins}

    result: dict = {
        "generated_by": "extract_symbols.py",
        "method": args.method,
        "python": f"cp{sys.version_info.major}{sys.version_info.minor}",
        "tensorrt": {},
        "cudart": {},
        "pynvml": {},
    }
    signatures: dict = {}
    with tempfile.TemporaryDirectory(prefix="trt-symbols-") as tmp:
        work = Path(tmp)
        if "tensorrt" not in args.skip:
            for key, spec in trt_pins.items():
                result["tensorrt"][key] = tensorrt(spec, work, args.wheel_dir, args)
        if "cudart" not in args.skip:
            for key, spec in cudart_pins.items():
                result["cudart"][key] = cudart(spec, work, args.wheel_dir, args)
        if "pynvml" not in args.skip:
            for key, spec in nvml_pins.items():
                result["pynvml"][key] = pynvml(spec, work, args.wheel_dir)
    for section in ("tensorrt", "cudart"):
        for key, table in result[section].items():
            sig = table.pop("signatures", None)
            if sig:
                signatures.setdefault(section, {})[key] = sig
    failures = self_check(result)
    if failures:
        print("self-check FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    args.out.write_text(dump_compact(result) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); self-check passed")
    if args.signatures:
        args.signatures.write_text(json.dumps(signatures, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.signatures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
