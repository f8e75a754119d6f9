"""The README's API error table lists exactly the (status, error) pairs the code can answer:
every `RequestRejected(...)` and `error_response(...)` in src/, plus what werkzeug's HTTP errors
become (405 method_not_allowed, 404 for an unknown path). A code added without a row, or a row
for a code nothing emits any more, fails here."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# werkzeug errors the app can raise, after api_server's `_http` handler names them
HTTP_ERRORS = {(404, "not_found"), (405, "method_not_allowed")}
EMITTED = re.compile(r"(?:RequestRejected|error_response)\(\s*(\d{3}),\s*\"([a-z_]+)\"")
ROW = re.compile(r"^\|\s*(\d{3})\s*\|\s*`([a-z_]+)`\s*\|", re.M)


def emitted() -> set[tuple[int, str]]:
    from mailjobs.web.errors import CODES  # what waitress answers itself, in the JSON shape

    found = set(HTTP_ERRORS) | set(CODES.items())
    for path in (ROOT / "src").rglob("*.py"):
        found |= {(int(s), c) for s, c in EMITTED.findall(path.read_text())}
    return found


def documented() -> set[tuple[int, str]]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| Status | `error` | When |"):]
    table = table[:table.index("\n\n")]
    return {(int(s), c) for s, c in ROW.findall(table)}


def test_every_error_the_api_can_answer_is_in_the_readme_table():
    missing = emitted() - documented()
    assert not missing, f"not in the README's error table: {sorted(missing)}"


def test_the_readme_table_lists_no_error_the_api_cannot_answer():
    stale = documented() - emitted()
    assert not stale, f"in the README's error table but never answered: {sorted(stale)}"
