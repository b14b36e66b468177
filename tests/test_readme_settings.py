"""The README's settings table is the one generated from ``Settings``: every field, no others."""

from __future__ import annotations

import re

from service.config import Settings
from service.settings_doc import readme_section, render_table, stale_meanings
from tests.conftest import REPO


def test_readme_settings_table_equals_settings_fields() -> None:
    section = readme_section((REPO / "README.md").read_text())
    listed = re.findall(r"^\| `(DETECT_\w+)` \|", section, flags=re.M)
    assert listed == [f"DETECT_{name.upper()}" for name in Settings.model_fields]
    assert section == render_table(), "stale README table: run python scripts/settings_table.py"


def test_every_documented_meaning_belongs_to_a_setting() -> None:
    assert stale_meanings() == []
