"""The README's configuration table names every variable settings.py reads, with its default."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from mailjobs import defaults
from mailjobs.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def _table() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\|\s*`([A-Z_]+)`\s*\|\s*(.*?)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip("` ")
    return rows


def test_every_setting_is_in_the_readme_with_its_default():
    table = _table()
    names = {f.name.upper() for f in fields(Settings)}
    assert names <= set(table), f"missing from README: {sorted(names - set(table))}"
    for name, default in defaults.ENV_DEFAULTS.items():
        assert table[name] == default, f"{name}: README says {table[name]!r}, code {default!r}"


def test_env_example_lists_every_setting():
    listed = set(re.findall(r"^#?\s*([A-Z_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    names = {f.name.upper() for f in fields(Settings)}
    assert names <= listed, f"missing from .env.example: {sorted(names - listed)}"
