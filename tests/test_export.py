"""A job's recipients as CSV (issue 18): the API's recipients.csv, the dashboard's download and
`mailjobs export`, parsed back with the `csv` module: quoting, formula injection, every page."""
from __future__ import annotations

import csv
import io

import pytest

from mailjobs import defaults, export
from served import served
from test_api_enqueue import body, post
from test_dashboard import login


def h(key):
    return {"X-API-Key": key}


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def csv_of(client, key, job_id):
    r = client.get(f"/api/jobs/{job_id}/recipients.csv", headers=h(key))
    assert r.status_code == 200, r.data
    assert r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"] == (
        f'attachment; filename="job-{job_id}-recipients.csv"')
    return r.get_data(as_text=True)


def set_row(dao, job_id, email, **values):
    cols = ", ".join(f"{k} = %s" for k in values)
    with dao.transaction() as cur:
        cur.execute(f"UPDATE job_recipients SET {cols} WHERE job_id = %s AND to_email = %s",
                    (*values.values(), job_id, email))


NASTY = {   # stored value -> what the CSV must hold
    'Smith, "Bob"\nJr.': 'Smith, "Bob"\nJr.',                  # comma, quotes, newline: quoted
    "=HYPERLINK(\"http://evil.example\",\"x\")": "'=HYPERLINK(\"http://evil.example\",\"x\")",
    "+1 555 0100": "'+1 555 0100",
    "-2+3": "'-2+3",
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "\tcmd": "'\tcmd",
    "\rcmd": "'\rcmd",
    "Ann O'Neil = fine": "Ann O'Neil = fine",                  # only a leading sign counts
}


def test_every_recipient_with_its_outcome_is_exported_with_a_header(client, key, dao):
    job_id = post(client, key, body(3)).json["job_id"]
    set_row(dao, job_id, "user0@example.com", status="sent", attempts=1,
            sent_at="2026-12-04 10:11:12.5", gmail_message_id="18c0ffee")
    set_row(dao, job_id, "user1@example.com", status="failed", attempts=2,
            error_code="gmail_400", error="Gmail 400 invalidArgument: Invalid To header")
    text = csv_of(client, key, job_id)
    assert text.splitlines()[0] == ",".join(export.COLUMNS)
    assert text.endswith("\r\n")
    rows = rows_of(text)
    assert [r["to_email"] for r in rows] == [f"user{i}@example.com" for i in range(3)]
    assert rows[0] | {"recipient_id": "?"} == {
        "recipient_id": "?", "to_email": "user0@example.com", "name": "User 0", "status": "sent",
        "attempts": "1", "error_code": "", "error": "", "sent_at": "2026-12-04T10:11:12.500000Z",
        "gmail_message_id": "18c0ffee", "locale": "", "locale_used": "", "metadata": ""}
    assert (rows[1]["status"], rows[1]["attempts"], rows[1]["error_code"], rows[1]["error"]) == (
        "failed", "2", "gmail_400", "Gmail 400 invalidArgument: Invalid To header")
    assert (rows[2]["status"], rows[2]["sent_at"]) == ("queued", "")
    ids = [int(r["recipient_id"]) for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_quoting_survives_and_formulas_are_defused(client, key, dao):
    job_id = post(client, key, body(len(NASTY))).json["job_id"]
    for i, stored in enumerate(NASTY):
        set_row(dao, job_id, f"user{i}@example.com", name=stored, error=stored,
                error_code="x" if i else "=1+1")
    rows = rows_of(csv_of(client, key, job_id))
    assert [r["name"] for r in rows] == list(NASTY.values())
    assert [r["error"] for r in rows] == list(NASTY.values())
    assert rows[0]["error_code"] == "'=1+1"
    # no exported text cell starts with a character a spreadsheet would evaluate
    for r in rows:
        for value in r.values():
            assert not value.startswith(export.FORMULA_STARTS), value


@pytest.mark.parametrize("n", [9, 10])   # a last page full (then an empty read) or short
def test_a_job_of_many_pages_is_exported_whole_and_in_order(client, key, monkeypatch, n):
    monkeypatch.setattr(defaults, "EXPORT_PAGE_SIZE", 3)
    job_id = post(client, key, body(n)).json["job_id"]
    rows = rows_of(csv_of(client, key, job_id))
    assert [r["to_email"] for r in rows] == [f"user{i}@example.com" for i in range(n)]
    assert len({r["recipient_id"] for r in rows}) == n


def test_the_pages_are_read_one_at_a_time_as_the_answer_is_written(client, key, dao,
                                                                   monkeypatch):
    """Constant memory: the answer is a stream, each page read only when it is written."""
    monkeypatch.setattr(defaults, "EXPORT_PAGE_SIZE", 2)
    job_id = post(client, key, body(6)).json["job_id"]
    reads = []
    real = dao.export_recipients_page
    monkeypatch.setattr(dao, "export_recipients_page",
                        lambda *a: reads.append(a[1]) or real(*a))
    r = client.get(f"/api/jobs/{job_id}/recipients.csv", headers=h(key), buffered=False)
    assert r.is_streamed
    chunks = iter(r.response)
    first = next(chunks)             # the header and the first page, read before answering
    assert len(reads) == 1 and first.count(b"\r\n") == 3
    next(chunks)
    assert len(reads) == 2
    rest = b"".join(chunks)
    r.close()
    assert len(reads) == 4 and rest.count(b"\r\n") == 2     # the 4th read finds nothing


def test_another_keys_job_is_not_found_and_an_operator_may_export_any(client, key, make_key):
    job_id = post(client, key, body(2)).json["job_id"]
    other = make_key(senders=["*"])
    r = client.get(f"/api/jobs/{job_id}/recipients.csv", headers=h(other))
    assert (r.status_code, r.json["error"], r.json["field"]) == (404, "not_found", "job_id")
    assert client.get(f"/api/jobs/{job_id + 1}/recipients.csv", headers=h(key)).status_code == 404
    op = make_key(senders=[], operator=True)
    assert len(rows_of(csv_of(client, op, job_id))) == 2
    assert client.get(f"/api/jobs/{job_id}/recipients.csv").status_code == 401


def test_the_dashboard_job_page_links_to_the_download(client, key, make_key):
    job_id = post(client, key, body(2)).json["job_id"]
    login(client, make_key(senders=[], operator=True))
    page = client.get(f"/dashboard/jobs/{job_id}").get_data(as_text=True)
    link = f"/dashboard/jobs/{job_id}/recipients.csv"
    assert f'href="{link}"' in page
    r = client.get(link)
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert [x["to_email"] for x in rows_of(r.get_data(as_text=True))] == [
        "user0@example.com", "user1@example.com"]
    assert client.get(f"/dashboard/jobs/{job_id + 1}/recipients.csv").status_code == 404


def test_the_cli_exports_to_a_file_and_to_stdout_locally_and_through_the_api(
        run, client, key, dao, app, make_key, tmp_path):
    job_id = post(client, key, body(3)).json["job_id"]
    set_row(dao, job_id, "user1@example.com", name="=cmd|' /C calc'!A0")
    out = tmp_path / "job.csv"
    assert run("export", str(job_id), "--csv", "--output", str(out)).exit_code == 0
    local = out.read_bytes().decode()
    assert rows_of(local)[1]["name"] == "'=cmd|' /C calc'!A0"
    assert run("export", str(job_id), "--csv").stdout_bytes.decode() == local
    missing = run("export", str(job_id + 1), "--csv")
    assert missing.exit_code != 0 and f"no job {job_id + 1}" in missing.output
    with served(app) as url:
        remote = run("--url", url, "--key", key, "export", str(job_id), "--csv")
        assert remote.exit_code == 0 and remote.stdout_bytes.decode() == local
        other = run("--url", url, "--key", make_key(senders=["*"]), "export", str(job_id),
                    "--csv")
        assert other.exit_code != 0 and "HTTP 404" in other.output


def test_a_database_that_fails_on_the_first_page_is_a_503_not_a_cut_off_file(client, key, dao,
                                                                            monkeypatch):
    from mailjobs.dao_mysql import DatabaseUnavailable

    job_id = post(client, key, body(2)).json["job_id"]

    def down(*args):
        raise DatabaseUnavailable("the database did not answer", kind="timeout")
    monkeypatch.setattr(dao, "export_recipients_page", down)
    r = client.get(f"/api/jobs/{job_id}/recipients.csv", headers=h(key))
    assert (r.status_code, r.json["error"]) == (503, "database_unavailable")
    assert "Retry-After" in r.headers
