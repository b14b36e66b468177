"""Schemathesis against the live server's own OpenAPI schema: no 5xx, no schema violations.

Every operation is fuzzed with valid (positive) and, where it takes any input, invalid
(negative) requests, from a fixed hypothesis seed so CI is reproducible; the test counts the
requests actually sent and insists on at least 1,000. It drives hypothesis itself instead of
schemathesis' pytest plugin, whose lazy fixture loading breaks on pytest 9.2 (``'Function'
object has no attribute '_nodeid'``), and the count lives inside the one test, so it does not
depend on another test having run first.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable

from tests.conftest import Server

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 200  # per generation mode; hypothesis stops early on tiny input spaces
MIN_REQUESTS = 1000
# A 504 for a deadline the fuzzer made impossibly short (1 ms) is the documented answer, not a
# server fault; every other 5xx fails the test.
EXPECTED_5XX = {504: "deadline_exceeded"}


@schemathesis.check
def no_server_error(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    if response.status_code < 500:
        return None
    code = (response.json() or {}).get("error", {}) if response.content else {}
    expected = EXPECTED_5XX.get(response.status_code)
    if expected and isinstance(code, dict) and code.get("code") == expected:
        return None
    raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


CHECKS = [
    no_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def _fuzz(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode) -> int:
    """Send hypothesis-generated requests for one operation; the number sent."""
    sent = 0

    @seed(20261123)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,  # no replay of examples saved by earlier runs: the same run everywhere
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(checks=CHECKS, timeout=60)

    try:
        run()
    except Unsatisfiable:
        # Some inputs have no invalid form schemathesis can express (a free-form string query
        # parameter); schemathesis' own runner skips those the same way. Valid requests must
        # always be possible.
        if mode is not schemathesis.GenerationMode.NEGATIVE:
            raise
    return sent


def _modes(operation: schemathesis.APIOperation) -> list[schemathesis.GenerationMode]:
    # An operation without parameters or body has nothing a request could get wrong.
    has_inputs = any(True for _ in operation.iter_parameters()) or bool(list(operation.body))
    modes = schemathesis.GenerationMode
    return [modes.POSITIVE, modes.NEGATIVE] if has_inputs else [modes.POSITIVE]


def test_no_server_errors_and_responses_match_schema(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()  # raises for an operation schemathesis cannot read
        for mode in _modes(operation):
            sent[f"{operation.label} {mode.value}"] = _fuzz(operation, mode)
    print(sent)  # per operation and mode, shown with -s
    assert sum(sent.values()) >= MIN_REQUESTS, f"only {sum(sent.values())} requests: {sent}"
