"""promtool: the Prometheus config, the alert rules and their unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import require_tool

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL_HINT = "apt-get install prometheus (scripts/test.sh does)"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool", PROMTOOL_HINT)
    return subprocess.run([binary, *args], cwd=PROM, capture_output=True, text=True, check=False)


def test_config_is_valid() -> None:
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_are_valid() -> None:
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # Every rule in the file was read (a rule promtool silently dropped would not be checked).
    rules = sum(
        len(g["rules"]) for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    )
    assert rules and f"{rules} rules found" in done.stdout, done.stdout


def test_alert_unit_tests_pass() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
