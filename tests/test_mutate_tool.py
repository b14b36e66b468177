"""scripts/mutate.py itself: which mutants it makes, and the ``# no-mutate`` exclusions."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mutate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate", REPO / "scripts" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutate"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


SOURCE = """\
LIMIT = 3


def over(x: int) -> bool:
    if x > LIMIT:
        return True
    return False


CHUNK = 256  # no-mutate: a speed knob
ALSO = 7  # no-mutate:
"""


def target(mutate: ModuleType, tmp_path: Path) -> object:
    path = tmp_path / "module.py"
    path.write_text(SOURCE)
    return mutate.Target(str(path), None, (("unused",),))


def test_each_change_is_one_mutant_and_applies_to_its_own_node(
    mutate: ModuleType, tmp_path: Path
) -> None:
    t = target(mutate, tmp_path)
    found = mutate.mutants("m", t)
    described = {(m.line, m.description) for m in found}
    assert (1, "3 -> 4") in described
    assert (5, "if c -> if not c") in described
    assert (5, "comparison 0: Gt -> GtE") in described
    assert (6, "True -> False") in described and (6, "return x -> return None") in described
    flip = next(m for m in found if m.description == "comparison 0: Gt -> GtE")
    mutated = mutate.mutated_source(t, flip)
    assert "x >= LIMIT" in mutated and "x > LIMIT" not in mutated
    assert "x > LIMIT" in mutate.mutated_source(t, None)  # the baseline is unchanged


def test_no_mutate_lines_need_a_reason_and_are_listed_not_run(
    mutate: ModuleType, tmp_path: Path
) -> None:
    t = target(mutate, tmp_path)
    assert all(m.line != 10 for m in mutate.mutants("m", t))
    assert [(m.line, m.description) for m in mutate.mutants("m", t, excluded=True)] == [
        (10, "256 -> 257")
    ]
    # A marker without a reason excludes nothing.
    assert any(m.line == 11 for m in mutate.mutants("m", t))
    assert mutate.excluded_lines(t.path) == {10: "a speed knob"}


def test_exclusions_stay_a_small_minority_of_the_serving_modules(mutate: ModuleType) -> None:
    """A reader can check each one in the report; a tool that excluded much would hide gaps."""
    run = sum(len(mutate.mutants(n, t)) for n, t in mutate.TARGETS.items())
    held = sum(len(mutate.mutants(n, t, excluded=True)) for n, t in mutate.TARGETS.items())
    assert run > 500
    assert held <= 0.05 * (run + held), (held, run)


def test_dataclass_declarations_are_not_mutated_but_their_values_are(
    mutate: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "declared.py"
    path.write_text(
        "from dataclasses import dataclass, field\n\n\n"
        "@dataclass(frozen=True, eq=False)\n"
        "class A:\n"
        "    alpha: float = field(default=0.2, repr=False)\n"
    )
    t = mutate.Target(str(path), None, (("unused",),))
    assert sorted(m.description for m in mutate.mutants("m", t)) == ["0.2 -> 0.4", "False -> True"]


def test_issue_18_regressions_still_apply_to_the_code(mutate: ModuleType) -> None:
    """``--named`` edits text: each edit must still find what it changes (run it to see them
    caught; here only that none has gone stale)."""
    for named in mutate.NAMED:
        text = (REPO / named.path).read_text()
        assert named.old in text and named.old != named.new, named.name
        assert all((REPO / t).exists() for t in named.tests), named.name


def test_a_rerun_takes_the_survivors_of_unchanged_modules_and_all_of_changed_ones(
    mutate: ModuleType, tmp_path: Path
) -> None:
    t = target(mutate, tmp_path)
    found = mutate.mutants("m", t)
    outcomes = [mutate.Outcome(found[0], "survived")]
    outcomes += [mutate.Outcome(m, "killed", "stage 1: FAILED x") for m in found[1:]]
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes]))
    kept, todo, afresh = mutate._earlier_run(earlier, {"m": t})
    assert todo == [found[0]] and afresh == []
    assert [o.mutant for o in kept] == found[1:] and {o.status for o in kept} == {"killed"}
    # The module changed since: its earlier verdicts may be about other nodes; all run again.
    Path(t.path).write_text(SOURCE.replace("LIMIT = 3", "LIMIT = 3\nSPARE = 5"))
    mutate.source_of.cache_clear()  # a new run reads the module afresh
    kept, todo, afresh = mutate._earlier_run(earlier, {"m": t})
    assert kept == [] and afresh == ["m"] and todo == mutate.mutants("m", t)
