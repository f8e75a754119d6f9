"""A job's recipients as CSV, streamed: `GET /api/jobs/<id>/recipients.csv`, the dashboard's
download link and `mailjobs export JOB --csv` all write these rows.

Constant memory whatever the job's size: the rows are read in keyset pages of EXPORT_PAGE_SIZE
(one short query each, no connection held between pages) and each page is written out as one
chunk before the next is read. Quoting is the `csv` module's (RFC 4180, CRLF line ends).
Values a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
carriage return: OWASP's "CSV injection" list) are prefixed with `'`, so a recipient's name or
an error text is shown, never evaluated.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from mailjobs import defaults

# The header row, in column order. The export reads these columns by name from
# Dao.export_recipients_page's rows (same order).
COLUMNS = ("recipient_id", "to_email", "name", "status", "attempts", "error_code", "error",
           "sent_at", "gmail_message_id", "locale", "locale_used",
           "metadata")   # metadata: the recipient's, as JSON
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

PageReader = Callable[[int, int, int], list[tuple[Any, ...]]]   # (job_id, after, limit) -> rows


def cell(value: Any) -> Any:
    """One CSV cell: timestamps in ISO 8601 UTC, None empty, formula-like text defused."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _chunk(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def csv_chunks(read_page: PageReader, job_id: int,
               page_size: int | None = None,
               before_page: Callable[[], None] | None = None) -> Iterator[str]:
    """The header, then one chunk of CSV text per page of `job_id`'s recipients, in id order.

    Lazy: each page is read when its chunk is asked for (`first_page()` reads the first one
    eagerly). `before_page` runs before each read: the API starts a fresh request deadline
    there, so a long export is many short queries, each bounded."""
    page_size = page_size or defaults.EXPORT_PAGE_SIZE
    yield _chunk([list(COLUMNS)])
    after = 0
    while True:
        if before_page is not None:
            before_page()
        rows = read_page(job_id, after, page_size)
        if not rows:
            return
        yield _chunk([[cell(v) for v in row] for row in rows])
        if len(rows) < page_size:
            return
        after = int(rows[-1][0])


def first_page(chunks: Iterator[str]) -> Iterator[str]:
    """`chunks` with its header and first page read now (errors raise here, before an answer
    has started), then the rest lazily."""
    head = [next(chunks)]
    head.extend(_take_one(chunks))

    def rest() -> Iterator[str]:
        yield "".join(head)
        yield from chunks
    return rest()


def _take_one(chunks: Iterator[str]) -> list[str]:
    for chunk in chunks:
        return [chunk]
    return []


def csv_response(dao: Any, job_id: int, request_deadline: float) -> Any:
    """The streamed Flask answer of a job's export (the API's and the dashboard's): a generator
    kept in the request context (`stream_with_context`), each page under a fresh
    `request_deadline`; the header and first page are read before the answer starts, so an
    unreachable database is still a 503, not a cut-off file."""
    from flask import Response, stream_with_context

    from mailjobs.db import guard as db_guard

    def fresh_deadline() -> None:
        db_guard.start_deadline(request_deadline)

    chunks = first_page(csv_chunks(dao.export_recipients_page, job_id,
                                   before_page=fresh_deadline))
    response = Response(stream_with_context(chunks), mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="job-{job_id}-recipients.csv"')
    response.headers["Cache-Control"] = "no-store"
    return response
