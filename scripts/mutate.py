#!/usr/bin/env python3
"""Mutation testing of the serving-critical modules: would the suite notice a one-line change?

Each mutant is the module with one small change made through its syntax tree (a comparison
flipped, a number or status code changed, a call removed, a condition negated, an early
``return None``, ``and``/``or``, ``+``/``-``, ``min``/``max`` swapped). The module's chosen tests
run against it, fast ones first (``pytest -x``), slower ones only for what the fast ones missed.
A mutant the tests fail on (or time out on) is killed; one they pass is a survivor, listed with
``file:line`` in the report for a person to judge: a missing test, or an equivalent mutant.

A line a person has proven gives only equivalent mutants (a speed knob whose every value gives
the same answers, say) carries ``# no-mutate: <why>``; its mutants are not run, and the report
lists each such line with its reason and how many mutants it holds, so the exclusions stay visible.

Work happens in copies of the repository (one per job), never in the working tree.

    python3 scripts/mutate.py                      # every target, 2 jobs
    python3 scripts/mutate.py --only errors codec  # some targets
    python3 scripts/mutate.py --list               # the mutants, without running anything
    python3 scripts/mutate.py --named              # issue 18's regressions: each must be caught
    python3 scripts/mutate.py --rerun-survivors R.json  # an earlier run's survivors, today's tests
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import functools
import json
import os
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINES_ENV = "DETECT_TEST_FP32_INT8_ENGINES"  # tests/conftest.py reuses a build found there


@dataclass(frozen=True)
class Target:
    path: str
    scope: str | None  # a top-level function or class to mutate; None: the whole module
    stages: tuple[tuple[str, ...], ...]  # pytest arguments, cheapest first


HTTP = "tests/service/"
TARGETS: dict[str, Target] = {
    "postprocess": Target(
        "engines/model/postprocess.py",
        None,
        (
            (
                "tests/engines/test_postprocess.py",
                "tests/engines/test_boundaries.py",
                "tests/engines/test_formats.py",
            ),
        ),
    ),
    "admission": Target(
        "service/scheduler/admission.py",
        None,
        (
            ("tests/service/test_scheduler.py",),
            (HTTP + "test_overload_semantics_http.py", HTTP + "test_overload_http.py"),
        ),
    ),
    "batcher": Target(
        "service/scheduler/batcher.py",
        None,
        (
            ("tests/service/test_scheduler.py",),
            (
                HTTP + "test_overload_semantics_http.py",
                HTTP + "test_reliability_http.py",
                HTTP + "test_auto_precision_http.py",  # the registry wires auto to its observer
            ),
        ),
    ),
    "errors": Target(
        "service/errors.py",
        None,
        (
            ("tests/service/test_errors.py", "tests/service/test_scheduler.py"),
            (
                HTTP + "test_overload_semantics_http.py",
                HTTP + "test_overload_http.py",
                HTTP + "test_bad_input_http.py",
            ),
        ),
    ),
    "metrics": Target(
        "service/metrics.py",
        None,
        (("tests/service/test_metrics.py",), (HTTP + "test_overload_semantics_http.py",)),
    ),
    "observer": Target(  # where the scheduler's knowledge becomes metrics and feeds `auto`
        "service/registry.py",
        "_VariantObserver",
        (
            ("tests/service/test_metrics.py",),
            (HTTP + "test_overload_semantics_http.py", HTTP + "test_auto_precision_http.py"),
        ),
    ),
    "accounting": Target(  # the per-request counts, durations and in-flight gauge
        "service/flow.py",
        "serve",
        (
            (HTTP + "test_overload_semantics_http.py", HTTP + "test_request_accounting_http.py"),
            (HTTP + "test_overload_http.py",),  # the door check, before the body is read
        ),
    ),
    "codec": Target(
        "service/api/kserve_codec.py",
        None,
        (
            ("tests/service/test_kserve_codec.py",),
            (HTTP + "test_kserve_http.py", HTTP + "test_request_accounting_http.py"),
        ),
    ),
    "selection": Target(
        "service/selection.py",
        None,
        (
            (
                "tests/service/test_selection.py",
                "tests/service/test_speed.py",  # the selector on live figures
                "tests/service/test_metrics.py",
                "tests/service/test_audit.py",  # demotion: where auto goes instead
            ),
            (HTTP + "test_auto_precision_http.py",),
        ),
    ),
}


@dataclass(frozen=True)
class Named:
    """A hand-written mutant (issue 18's list): ``old`` -> ``new`` in ``path``, every occurrence."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


SEMANTICS = HTTP + "test_overload_semantics_http.py"
# The seven regressions issue 18 found surviving the suite, as one-line edits of today's code.
NAMED = (
    Named(
        "overload 503 -> 500",
        "service/errors.py",
        'status, code = 503, "overloaded"',
        'status, code = 500, "overloaded"',
        (SEMANTICS, HTTP + "test_overload_http.py"),
    ),
    Named(
        "Retry-After a constant",
        "service/errors.py",
        'return {"Retry-After": str(max(1, min(3600, math.ceil(seconds))))}',
        'return {"Retry-After": "1"}',
        (SEMANTICS,),
    ),
    Named(
        "batch size x3",
        "service/registry.py",
        "self._m.batch_size.labels(*self._labels).observe(size)",
        "self._m.batch_size.labels(*self._labels).observe(size * 3)",
        (SEMANTICS,),
    ),
    Named(
        "images_total + 5",
        "service/registry.py",
        "self._m.images.labels(*self._labels).inc(size)",
        "self._m.images.labels(*self._labels).inc(size + 5)",
        (SEMANTICS,),
    ),
    Named(
        "queue wait x1000",
        "service/registry.py",
        "hist.observe(wait)",
        "hist.observe(wait * 1000)",
        (SEMANTICS,),
    ),
    Named(
        "request duration x10",
        "service/flow.py",
        "metrics.request_duration.labels(model.name, chosen).observe(elapsed)",
        "metrics.request_duration.labels(model.name, chosen).observe(elapsed * 10)",
        (SEMANTICS,),
    ),
    Named(
        "KServe binary outputs never sent",
        "service/api/kserve_codec.py",
        "def wants_binary(request: InferRequest, name: str) -> bool:\n",
        "def wants_binary(request: InferRequest, name: str) -> bool:\n    return False\n",
        (HTTP + "test_kserve_http.py",),
    ),
    Named(
        "auto never fed queue waits",
        "service/registry.py",
        "self.selector.observe_queue_wait(self._precision, max(queue_waits_s))",
        "pass",
        (HTTP + "test_auto_precision_http.py",),
    ),
    Named(
        "NMS IoU boundary > -> >=",
        "engines/model/postprocess.py",
        "> iou_threshold, k=1)",
        ">= iou_threshold, k=1)",
        ("tests/engines/test_boundaries.py",),
    ),
    Named(
        "confidence boundary >= -> >",
        "engines/model/layouts.py",
        ">= conf",
        "> conf",
        ("tests/engines/test_boundaries.py",),
    ),
)

FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
ARITHMETIC: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
}
TEST_TIMEOUT_S = 180
QUIET_CALLS = ("log.", "logging.", "logger.")  # removing a log line changes no behaviour
NO_MUTATE = re.compile(r"#\s*no-mutate:\s*(\S.*)$")  # a reason is required


@dataclass(frozen=True)
class Mutant:
    target: str
    index: int  # position of the node in ast.walk order
    variant: int
    line: int
    description: str


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | timeout | error
    why: str | None = None  # the stage and the first test that failed
    seconds: float = 0.0
    source_line: str = field(default="")


def _number_change(value: float) -> float:
    if isinstance(value, int) and 400 <= value <= 599:  # an HTTP status: another status
        return 500 if value != 500 else 503
    if value == 0:
        return 1
    if isinstance(value, int):
        return value + 1 if value != 1 else 0
    return value * 2


def _changes(node: ast.AST) -> Iterator[str]:
    """Descriptions of the mutations possible at ``node`` (one mutant each)."""
    if isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            if type(op) in FLIP:
                yield f"comparison {k}: {type(op).__name__} -> {FLIP[type(op)].__name__}"
    elif isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        yield f"{type(node.op).__name__} -> {ARITHMETIC[type(node.op)].__name__}"
    elif isinstance(node, ast.AugAssign) and type(node.op) in ARITHMETIC:
        yield f"{type(node.op).__name__}= -> {ARITHMETIC[type(node.op)].__name__}="
    elif isinstance(node, ast.BoolOp):
        yield "and -> or" if isinstance(node.op, ast.And) else "or -> and"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not x -> x"
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield f"{node.value} -> {not node.value}"
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        yield f"{node.value!r} -> {_number_change(node.value)!r}"
    elif isinstance(node, ast.If):
        yield "if c -> if not c"
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield "return x -> return None"
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
        text = ast.unparse(node.value)
        if not text.startswith(QUIET_CALLS):
            yield f"call removed: {text[:60]}"
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        swap = {"max": "min", "min": "max"}.get(node.func.id)
        if swap:
            yield f"{node.func.id} -> {swap}"


def _apply(node: ast.AST, variant: int) -> ast.AST:
    """Make mutation ``variant`` of ``node`` in place; return the node to put in its place."""
    if isinstance(node, ast.Compare):
        flippable = [k for k, op in enumerate(node.ops) if type(op) in FLIP]
        k = flippable[variant]
        node.ops[k] = FLIP[type(node.ops[k])]()
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        node.op = ARITHMETIC[type(node.op)]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        return node.operand
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        node.value = not node.value
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        node.value = _number_change(node.value)
    elif isinstance(node, ast.If):
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif isinstance(node, ast.Return):
        node.value = ast.Constant(value=None)
    elif isinstance(node, ast.Expr):
        return ast.Pass()
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        node.func.id = "min" if node.func.id == "max" else "max"
    return node


# Dataclass options that cannot change what working code does: ``repr`` only changes the text
# of a repr; ``frozen`` only makes writes raise, and code that passes its tests never writes.
DECLARATIONS = {"dataclass": ("frozen", "repr"), "field": ("repr",)}


def _skipped(tree: ast.Module) -> set[int]:
    """Nodes never mutated: annotations, f-string parts (messages), docstrings, and the
    dataclass options of ``DECLARATIONS``."""
    skip: set[int] = set()

    def drop(sub: ast.AST | None) -> None:
        if sub is not None:
            skip.update(id(n) for n in ast.walk(sub))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            for keyword in node.keywords:
                if keyword.arg in DECLARATIONS.get(node.func.id, ()):
                    drop(keyword)
        if isinstance(node, ast.JoinedStr):
            drop(node)
        elif isinstance(node, ast.AnnAssign | ast.arg):
            drop(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            drop(node.returns)
    return skip


def _scope_lines(tree: ast.Module, scope: str | None) -> tuple[int, int]:
    if scope is None:
        return 0, 10**9
    for node in tree.body:
        if getattr(node, "name", None) == scope:  # a class or function definition
            return node.lineno, node.end_lineno or node.lineno
    raise SystemExit(f"no top-level {scope} in the target")


@functools.cache
def source_of(path: str) -> str:
    """The module's text as it was when first read: editing the tree during a run (a merge)
    must not shift the mutants, which are found by their position in this text."""
    return (REPO / path).read_text()


def excluded_lines(path: str) -> dict[int, str]:
    """Line number -> the reason its ``# no-mutate:`` comment gives."""
    lines = source_of(path).splitlines()
    return {n: m.group(1) for n, text in enumerate(lines, 1) if (m := NO_MUTATE.search(text))}


def mutants(name: str, target: Target, *, excluded: bool = False) -> list[Mutant]:
    """The target's mutants; with ``excluded``, instead those on ``# no-mutate`` lines."""
    tree = ast.parse(source_of(target.path))
    first, last = _scope_lines(tree, target.scope)
    skip = _skipped(tree)
    marked = excluded_lines(target.path)
    found = []
    for index, node in enumerate(ast.walk(tree)):
        line = getattr(node, "lineno", 0)
        if id(node) in skip or not first <= line <= last or (line in marked) != excluded:
            continue
        for variant, description in enumerate(_changes(node)):
            found.append(Mutant(name, index, variant, line, description))
    return found


def mutated_source(target: Target, mutant: Mutant | None) -> str:
    """The module as the tests will import it (unparsed, so the unmutated one is a baseline)."""
    tree = ast.parse(source_of(target.path))
    if mutant is not None:
        nodes = list(ast.walk(tree))
        victim = nodes[mutant.index]
        replacement = _apply(victim, mutant.variant)
        if replacement is not victim:
            for parent in nodes:
                for field_name, value in ast.iter_fields(parent):
                    if value is victim:
                        setattr(parent, field_name, replacement)
                    elif isinstance(value, list) and any(v is victim for v in value):
                        value[[v is victim for v in value].index(True)] = replacement
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _workspace(root: Path) -> Path:
    """A copy of the repository (without .git and caches) the tests can run in."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".venv")
    shutil.copytree(REPO, root, ignore=ignore, symlinks=True)
    return root


def _share_engines(tmp: Path, build: bool) -> None:
    """Point the tests' FP32 + INT8 fixture at one folder for every job (a build found there is
    reused) and, when a stage serves both, build it now: once, not once per mutant or by two
    jobs at once."""
    engines = Path(os.environ.get(ENGINES_ENV) or tmp / "fp32-int8")
    os.environ[ENGINES_ENV] = str(engines)
    if build:
        _prebuild(engines)


def _prebuild(engines: Path) -> None:
    env = {
        **os.environ,
        "DETECT_MODELS_DIR": str(REPO / "models"),
        "DETECT_ENGINES_DIR": str(engines),
    }
    command = ["build", "yolov3-tiny-coco", "--precision", "fp32,int8"]
    subprocess.run([sys.executable, "-m", "service.cli", *command], cwd=REPO, env=env, check=True)


def _run_stages(work: Path, target: Target, timeout_s: float) -> tuple[str, str | None]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for stage, args in enumerate(target.stages):
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
        # A mutant that hangs one test fails it at this bound (pytest-timeout), not at the
        # stage's: no test of these stages takes a minute unmutated. The thread method ends
        # the process: the signal method's exception is swallowed by an event loop spinning
        # in a callback (asyncio logs a callback's BaseException and carries on).
        command += ["-o", f"timeout={TEST_TIMEOUT_S}", "-o", "timeout_method=thread", *args]
        try:
            done = subprocess.run(
                command, cwd=work, env=env, capture_output=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return "timeout", f"stage {stage + 1}: timed out"
        if done.returncode in (2, 3, 4, 5):  # interrupted, internal or usage error, no tests
            return "error", f"stage {stage + 1}: pytest exit {done.returncode}"
        if done.returncode != 0:
            failed = [ln for ln in done.stdout.decode(errors="replace").splitlines()]
            first = next((ln for ln in failed if ln.startswith(("FAILED", "ERROR"))), "?")
            return "killed", f"stage {stage + 1}: {first[:160]}"
    return "survived", None


def run_one(work: Path, target: Target, mutant: Mutant | None, timeout_s: float) -> Outcome:
    path = work / target.path
    original = path.read_text()
    if original != source_of(target.path):
        raise SystemExit(f"{target.path} in the copy differs from the one mutated")
    for stale in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
        stale.unlink()
    path.write_text(mutated_source(target, mutant))
    started = time.monotonic()
    try:
        status, stage = _run_stages(work, target, timeout_s)
    finally:
        path.write_text(original)
    dummy = Mutant("baseline", -1, 0, 0, "none")
    line = "" if mutant is None else source_of(target.path).splitlines()[mutant.line - 1]
    return Outcome(mutant or dummy, status, stage, time.monotonic() - started, line.strip())


def run_named(work: Path, named: Named, timeout_s: float) -> tuple[str, str | None]:
    """Apply one hand-written mutant in ``work`` and run its tests: killed or survived."""
    path = work / named.path
    original = path.read_text()
    if named.old not in original:
        raise SystemExit(f"{named.name}: {named.old!r} is no longer in {named.path}")
    path.write_text(original.replace(named.old, named.new))
    try:
        return _run_stages(work, Target(named.path, None, (named.tests,)), timeout_s)
    finally:
        path.write_text(original)


def check_named(timeout_s: float) -> int:
    """Issue 18's regressions, one at a time in a copy of the repository: each must be caught."""
    missed = 0
    with tempfile.TemporaryDirectory(prefix="mutate-named-") as tmp:
        _share_engines(Path(tmp), build=True)  # test_auto_precision_http serves FP32 + INT8
        work = _workspace(Path(tmp) / "work")
        for named in NAMED:
            status, why = run_named(work, named, timeout_s)
            missed += status not in ("killed", "timeout")
            print(f"{status:8} {named.name} ({named.path}) [{why}]", flush=True)
    print(f"{len(NAMED) - missed} of {len(NAMED)} caught")
    return 1 if missed else 0


def _earlier_run(
    path: Path, chosen: dict[str, Target]
) -> tuple[list[Outcome], list[Mutant], list[str]]:
    """(the earlier verdicts kept, the mutants to run now, the targets run afresh).

    A target whose module is unchanged since that run (the very same mutants) runs only its
    survivors again; one whose module changed (an index would now name another node) runs all
    of its mutants, and none of its earlier verdicts are kept.
    """
    earlier: dict[str, list[Outcome]] = {name: [] for name in chosen}
    for raw in json.loads(path.read_text()):
        mutant = Mutant(**raw.pop("mutant"))
        if mutant.target in chosen:
            earlier[mutant.target].append(Outcome(mutant, **raw))
    kept: list[Outcome] = []
    todo: list[Mutant] = []
    afresh: list[str] = []
    for name, target in chosen.items():
        current = mutants(name, target)
        if {o.mutant for o in earlier[name]} != set(current):
            afresh.append(name)
            todo += current
            continue
        kept += [o for o in earlier[name] if o.status != "survived"]
        todo += [o.mutant for o in earlier[name] if o.status == "survived"]
    return kept, todo, afresh


def report(
    outcomes: list[Outcome],
    seconds: float,
    path: Path,
    planned: int,
    existing: int,
    rerun: tuple[Path, list[str]] | None = None,
) -> None:
    lines = [
        "# Mutation testing report",
        "",
        # The exact command, so a figure can be reproduced (sample, seed and stages decide it).
        f"`{' '.join(['python3', 'scripts/mutate.py', *sys.argv[1:]])}` (see its docstring).",
        "",
    ]
    lines += ["| target | module | mutants | killed | timeouts | survived | kill rate |"]
    lines += ["|---|---|---:|---:|---:|---:|---:|"]
    totals = [0, 0, 0, 0]
    for name, target in TARGETS.items():
        mine = [o for o in outcomes if o.mutant.target == name]
        if not mine:
            continue
        killed = sum(o.status == "killed" for o in mine)
        timeouts = sum(o.status == "timeout" for o in mine)
        survived = sum(o.status == "survived" for o in mine)
        rate = (killed + timeouts) / len(mine)
        where = target.path + (f"::{target.scope}" if target.scope else "")
        lines.append(
            f"| {name} | `{where}` | {len(mine)} | {killed} | {timeouts} | {survived} "
            f"| {rate:.0%} |"
        )
        totals = [
            a + b for a, b in zip(totals, [len(mine), killed, timeouts, survived], strict=True)
        ]
    if totals[0]:
        rate = (totals[1] + totals[2]) / totals[0]
        lines.append(
            f"| **all** | | {totals[0]} | {totals[1]} | {totals[2]} | {totals[3]} | {rate:.1%} |"
        )
    errors = [o for o in outcomes if o.status == "error"]
    lines += [
        "",
        f"Mutants run: {len(outcomes)} of {planned} planned ({existing} exist in these modules; "
        "`--sample` draws a subset). "
        f"Wall time: {seconds / 60:.1f} min. "
        f"Errors (not counted above): {len(errors)}.",
    ]
    if rerun is not None:
        again = [o for o in outcomes if (o.why or "").startswith("re-run")]
        caught = sum(o.status in ("killed", "timeout") for o in again)
        changed = ", ".join(rerun[1]) or "none"
        lines += [
            "",
            f"A re-run of `{rerun[0]}` against today's code and tests: the survivors of targets "
            f"whose module is unchanged, and every mutant of those whose module changed since "
            f"({changed}). {caught} of the {len(again)} mutants run again so far were caught; "
            "every other verdict is the earlier run's.",
        ]
    lines += ["", "## Survivors", ""]
    for o in outcomes:
        if o.status == "survived":
            m = o.mutant
            lines.append(
                f"- `{TARGETS[m.target].path}:{m.line}` {m.description} — `{o.source_line}`"
            )
    lines += ["", "## Lines marked `# no-mutate` (their mutants not run)", ""]
    for name in dict.fromkeys(o.mutant.target for o in outcomes):
        target = TARGETS[name]
        held: dict[int, int] = {}
        for m in mutants(name, target, excluded=True):
            held[m.line] = held.get(m.line, 0) + 1
        reasons = excluded_lines(target.path)
        for line, count in sorted(held.items()):
            lines.append(f"- `{target.path}:{line}` ({count} mutants): {reasons[line]}")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps([asdict(o) for o in outcomes], indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(TARGETS), help="default: all")
    parser.add_argument("--jobs", type=int, default=2, help="repository copies run at once")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test stage")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "mutation-report.md")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument(
        "--named", action="store_true", help="run only issue 18's hand-written regressions"
    )
    parser.add_argument(
        "--sample", type=int, default=0, help="run this many mutants per target, drawn at random"
    )
    parser.add_argument("--seed", type=int, default=18, help="of the --sample draw")
    parser.add_argument(
        "--stages", type=int, default=0, help="run only the first N test stages (0: all)"
    )
    parser.add_argument(
        "--rerun-survivors",
        type=Path,
        metavar="JSON",
        help="re-run only the survivors of an earlier report (the modules must be unchanged)",
    )
    args = parser.parse_args()
    if args.named:
        return check_named(args.timeout)
    chosen = {n: TARGETS[n] for n in (args.only or TARGETS)}
    if args.stages:  # a lower bound on the kill rate: slower tests might kill more
        chosen = {n: replace(t, stages=t.stages[: args.stages]) for n, t in chosen.items()}
    todo, planned = [], 0
    for name, target in chosen.items():
        found = mutants(name, target)
        planned += len(found)
        if 0 < args.sample < len(found):
            keep = set(random.Random(f"{args.seed}-{name}").sample(range(len(found)), args.sample))
            found = [m for k, m in enumerate(found) if k in keep]
        todo += found
    earlier: list[Outcome] = []
    afresh: list[str] = []
    if args.rerun_survivors:
        earlier, todo, afresh = _earlier_run(args.rerun_survivors, chosen)
    # Round robin over the targets: a run cut short still says something about every module.
    rank = {id(m): k for name in chosen for k, m in enumerate(x for x in todo if x.target == name)}
    todo.sort(key=lambda m: rank[id(m)])
    if args.list:
        for m in todo:
            print(f"{chosen[m.target].path}:{m.line}: {m.description}")
        print(f"{len(todo)} mutants")
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        both = any("auto_precision" in a for t in chosen.values() for s in t.stages for a in s)
        _share_engines(Path(tmp), build=both)
        works: queue.Queue[Path] = queue.Queue()
        for k in range(args.jobs):
            works.put(_workspace(Path(tmp) / f"work{k}"))

        def one(item: tuple[str, Mutant | None]) -> Outcome:
            work = works.get()
            try:
                return run_one(work, chosen[item[0]], item[1], args.timeout)
            finally:
                works.put(work)

        # The unmutated (unparsed) modules must pass every stage, or nothing below means much.
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for name, base in zip(chosen, pool.map(one, [(n, None) for n in chosen]), strict=True):
                print(f"baseline {name}: {base.status} {base.why or ''}", flush=True)
                if base.status != "survived":  # retried once: a loaded machine can be slow
                    base = one((name, None))
                if base.status != "survived":
                    raise SystemExit(f"baseline of {name} fails its own tests: fix that first")
            outcomes = list(earlier)
            for outcome in pool.map(one, [(m.target, m) for m in todo]):
                m = outcome.mutant
                where = f"{chosen[m.target].path}:{m.line}"
                print(f"{outcome.status:8} {where} {m.description} [{outcome.why}]", flush=True)
                if args.rerun_survivors:  # say which verdicts are this run's
                    outcome.why = f"re-run: {outcome.why}"
                outcomes.append(outcome)
                # Rewritten after every mutant: an interrupted run still leaves its results.
                report(
                    outcomes,
                    time.monotonic() - started,
                    args.report,
                    len(todo) + len(earlier),
                    planned,
                    rerun=(args.rerun_survivors, afresh) if args.rerun_survivors else None,
                )
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
