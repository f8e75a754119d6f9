"""Attachments and inline images (issue 16, part 1): uploads (chunked, de-duplicated per key,
owned by the key), files in jobs checked at POST, and the messages that carry them, parsed back
with Python's email package from the outbox and from the fake Gmail (the real google client)."""
from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import io
import os
import zipfile

import pytest

from mailjobs.retention import purge
from runner_helpers import fast, running, wait_job_done
from test_api_enqueue import assert_nothing_written, body, post
from test_transport_smtp import start_server  # noqa: F401, F811  (a real SMTP server)

UPLOAD = "/api/attachments"


def upload(client, key, data: bytes, content_type="application/pdf", filename=None):
    url = UPLOAD + (f"?filename={filename}" if filename else "")
    return client.post(url, data=data, content_type=content_type, headers={"X-API-Key": key})


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def files_of(msg) -> list:
    return [p for p in msg.walk() if not p.is_multipart() and p.get_content_disposition()]


def outbox_message(tmp_path, job_id: int, dao, email_address: str):
    from runner_helpers import recipients

    (r,) = [r for r in recipients(dao, job_id) if r.to_email == email_address]
    return parse((tmp_path / "outbox" / str(job_id) / f"{r.id}.eml").read_bytes())


@pytest.fixture()
def outbox(dao, tmp_path):
    return fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "outbox"))


# --- uploads ----------------------------------------------------------------------------------
def test_upload_answers_201_with_size_sha256_and_type_and_is_chunked(client, key, dao):
    data = os.urandom(3 * 1024 * 1024 + 17)
    response = upload(client, key, data, filename="report.pdf")
    assert response.status_code == 201, response.json
    got = response.json
    assert got["id"].startswith("att_")
    assert got["size"] == len(data)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["content_type"] == "application/pdf"
    assert got["filename"] == "report.pdf"
    assert response.headers["Location"] == f"/api/attachments/{got['id']}"
    with dao.transaction() as cur:
        cur.execute("SELECT COUNT(*), MAX(LENGTH(data)) FROM attachment_chunks")
        chunks, largest = cur.fetchone()
    assert chunks == 4 and largest <= dao.settings.attachment_chunk_bytes
    again = client.get(f"/api/attachments/{got['id']}", headers={"X-API-Key": key})
    assert again.status_code == 200 and again.json["sha256"] == got["sha256"]


def test_same_bytes_twice_are_the_same_attachment_stored_once(client, key, dao):
    data = os.urandom(100_000)
    first = upload(client, key, data).json
    second = upload(client, key, data, content_type="application/octet-stream").json
    assert second["id"] == first["id"] and second["deduplicated"] is True
    assert first["deduplicated"] is False
    with dao.transaction() as cur:
        cur.execute("SELECT COUNT(*) FROM attachments")
        assert cur.fetchone()[0] == 1


def test_an_empty_upload_is_400(client, key):
    response = upload(client, key, b"")
    assert response.status_code == 400 and response.json["field"] == "body"


def test_another_keys_attachment_is_404(client, key, make_key, dao):
    other = make_key(name="other")
    data = b"%PDF-1.4 mine"
    mine = upload(client, key, data).json["id"]
    assert client.get(f"{UPLOAD}/{mine}", headers={"X-API-Key": other}).status_code == 404
    assert client.delete(f"{UPLOAD}/{mine}", headers={"X-API-Key": other}).status_code == 404
    # the same bytes uploaded by the other key are its own attachment
    theirs = upload(client, other, data).json["id"]
    assert theirs != mine
    b = body(1, attachments=[{"id": mine, "filename": "a.pdf"}])
    response = post(client, other, b)
    assert response.status_code == 400
    assert response.json["error"] == "unknown_attachment"
    assert response.json["field"] == "attachments[0].id"


def test_an_upload_over_the_budget_is_413_and_leaves_nothing(client, key, dao, app):
    app.extensions["mailjobs"]["settings"]  # the app's settings: ATTACHMENT_MAX_BYTES
    limit = dao.settings.attachment_max_bytes
    response = upload(client, key, b"x" * (limit + 1))
    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large" and response.json["field"] == "body"
    with dao.transaction() as cur:
        cur.execute("SELECT (SELECT COUNT(*) FROM attachments), "
                    "(SELECT COUNT(*) FROM attachment_chunks)")
        assert cur.fetchone() == (0, 0)


def test_an_upload_without_content_length_is_cut_at_the_budget(dao, make_key, database):
    """A chunked body (no Content-Length) is counted as it is read: refused past the budget."""
    from mailjobs.api_server import create_app

    settings = dao.settings.with_overrides(attachment_max_bytes=200_000,
                                           attachment_chunk_bytes=65536)
    client = create_app(settings, dao).test_client()
    key = make_key()
    stream = io.BytesIO(b"y" * 300_000)
    response = client.post(UPLOAD, input_stream=stream, content_type="application/pdf",
                           headers={"X-API-Key": key, "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})  # as waitress
    assert response.status_code == 413
    with dao.transaction() as cur:
        cur.execute("SELECT COUNT(*) FROM attachment_chunks")
        assert cur.fetchone()[0] == 0


@pytest.mark.parametrize("name", ["setup.exe", "run.BAT", "x.js", "tool.jar", "a.ps1.",
                                  "disk.iso"])
def test_blocked_file_types_are_refused_at_upload(client, key, name):
    response = upload(client, key, b"MZ...", content_type="application/octet-stream",
                      filename=name)
    assert response.status_code == 400
    assert response.json["error"] == "forbidden_file_type"
    assert response.json["field"] == "filename"


def _zip(names: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in names.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_a_zip_holding_a_blocked_file_is_refused_also_nested(client, key, dao):
    response = upload(client, key, _zip({"readme.txt": b"hi", "bin/setup.exe": b"MZ"}),
                      content_type="application/zip", filename="tools.zip")
    assert response.status_code == 400 and response.json["error"] == "forbidden_file_type"
    assert "setup.exe" in response.json["message"]
    nested = _zip({"inner.zip": _zip({"evil.vbs": b"x"})})
    response = upload(client, key, nested, content_type="application/zip")
    assert response.status_code == 400 and "evil.vbs" in response.json["message"]
    fine = upload(client, key, _zip({"a.pdf": b"%PDF"}), content_type="application/zip")
    assert fine.status_code == 201


def test_delete_is_refused_while_an_unfinished_job_uses_it(client, key, dao):
    att = upload(client, key, b"%PDF-1.4 guide", filename="guide.pdf").json["id"]
    job = post(client, key, body(1, attachments=[{"id": att}])).json["job_id"]
    shown = client.get(f"/api/jobs/{job}", headers={"X-API-Key": key}).json["attachments"]
    assert shown == [{"id": att, "filename": "guide.pdf", "content_type": "application/pdf",
                      "size": 14, "cid": None}]
    response = client.delete(f"{UPLOAD}/{att}", headers={"X-API-Key": key})
    assert response.status_code == 409
    assert response.json["error"] == "attachment_in_use" and str(job) in response.json["message"]
    client.post(f"/api/jobs/{job}/cancel", headers={"X-API-Key": key})
    assert client.delete(f"{UPLOAD}/{att}", headers={"X-API-Key": key}).status_code == 204
    assert client.get(f"{UPLOAD}/{att}", headers={"X-API-Key": key}).status_code == 404


def test_unused_attachments_are_purged_after_the_retention_days(client, key, dao):
    used = upload(client, key, b"used by a queued job").json["id"]
    idle = upload(client, key, b"idle").json["id"]
    post(client, key, body(1, attachments=[{"id": used, "filename": "u.txt"}]))
    with dao.transaction() as cur:
        cur.execute("UPDATE attachments SET last_used_at = UTC_TIMESTAMP(6) - INTERVAL 40 DAY")
    result = purge(dao.settings.with_overrides(attachment_retention_days=30), dao)
    assert result.counts["attachments_deleted"] == 1
    assert client.get(f"{UPLOAD}/{idle}", headers={"X-API-Key": key}).status_code == 404
    assert client.get(f"{UPLOAD}/{used}", headers={"X-API-Key": key}).status_code == 200


# --- checks at POST ---------------------------------------------------------------------------
def test_a_forbidden_filename_in_a_job_is_400_naming_the_field(client, key, dao):
    att = upload(client, key, b"%PDF").json["id"]
    b = body(2)
    b["recipients"][1]["attachments"] = [{"id": att, "filename": "invoice.pdf"},
                                         {"id": att, "filename": "invoice.exe"}]
    response = post(client, key, b)
    assert response.status_code == 400
    assert response.json["error"] == "forbidden_file_type"
    assert response.json["field"] == "recipients[1].attachments[1].filename"
    assert_nothing_written(dao)


def test_a_templated_filename_rendering_to_a_blocked_type_is_400(client, key, dao):
    att = upload(client, key, b"%PDF").json["id"]
    b = body(2, attachments=[{"id": att, "filename": "ticket-{{ n }}.{{ ext }}"}])
    b["recipients"][0]["variables"]["ext"] = "pdf"
    b["recipients"][1]["variables"]["ext"] = "exe"
    response = post(client, key, b)
    assert response.status_code == 400 and response.json["error"] == "forbidden_file_type"
    assert response.json["field"] == "attachments[0].filename"
    assert "recipients[1]" in response.json["message"]
    del b["recipients"][1]["variables"]["ext"]
    response = post(client, key, b)
    assert response.status_code == 400 and response.json["error"] == "missing_variables"


def test_a_message_over_gmails_35_mb_after_base64_is_400_naming_the_attachment(
        client, key, dao, database):
    from mailjobs.api_server import create_app

    settings = dao.settings.with_overrides(attachment_max_bytes=30 * 1024 * 1024)
    big_client = create_app(settings, dao).test_client()
    shared = upload(big_client, key, os.urandom(20 * 1024 * 1024)).json["id"]
    own = upload(big_client, key, os.urandom(6 * 1024 * 1024)).json["id"]   # 26 MB: 35+ in b64
    b = body(2, attachments=[{"id": shared, "filename": "big.bin"}])
    ok = post(big_client, key, b)
    assert ok.status_code == 202, ok.json
    b["recipients"][1]["attachments"] = [{"id": own, "filename": "own.bin"}]
    response = post(big_client, key, b)
    assert response.status_code == 400 and response.json["error"] == "message_too_large"
    assert response.json["field"] == "recipients[1].attachments[0]"


def test_inline_files_are_limited_in_total(client, key, dao):
    limit = dao.settings.attachment_inline_max_bytes
    half = base64.b64encode(b"a" * (limit // 2 + 1)).decode()
    b = body(1, attachments=[{"filename": "a.txt", "content_base64": half},
                             {"filename": "b.txt", "content_base64": half}])
    response = post(client, key, b)
    assert response.status_code == 413
    assert response.json["field"] == "attachments[1].content_base64"
    assert_nothing_written(dao)
    bad = post(client, key, body(1, attachments=[{"filename": "a.txt", "content_base64": "@@"}]))
    assert bad.status_code == 400 and bad.json["field"] == "attachments[0].content_base64"


# --- messages ---------------------------------------------------------------------------------
def test_outbox_messages_carry_the_files_with_names_types_bytes_and_cids(
        client, key, dao, outbox, tmp_path):
    guide = os.urandom(300_000)
    logo = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
    ticket = [os.urandom(5000), os.urandom(6000)]
    guide_id = upload(client, key, guide, filename="guide.pdf").json["id"]
    logo_id = upload(client, key, logo, content_type="image/png").json["id"]
    ticket_ids = [upload(client, key, t).json["id"] for t in ticket]
    dot = b"GIF89a" + os.urandom(64)
    b = body(2, attachments=[
        {"id": guide_id, "filename": "Guide für Zürich 指南.pdf"},
        {"id": logo_id, "inline": True, "cid": "logo"},
        {"filename": "notes.txt", "content_type": "text/plain",
         "content_base64": base64.b64encode(b"line one\r\n").decode()}])
    b["template"]["html"] = ('<p>Hello {{ name }}<img src="cid:logo">'
                             f'<img src="data:image/gif;base64,{base64.b64encode(dot).decode()}"'
                             '></p>')
    for i, r in enumerate(b["recipients"]):
        r["variables"]["code"] = f"C-{i}"
        r["attachments"] = [{"id": ticket_ids[i], "filename": "ticket-{{ code }}.pdf"}]
    response = post(client, key, b)
    assert response.status_code == 202, response.json
    job_id = response.json["job_id"]
    with running(outbox, dao) as (runner,):
        assert wait_job_done(dao, job_id) == "completed"
    # the shared files were read once and kept; the recipients' own never entered the cache
    assert runner.files.cache.misses == 3
    assert runner.files.cache.size == len(guide) + len(logo) + len(b"line one\r\n")
    for i in range(2):
        msg = outbox_message(tmp_path, job_id, dao, f"user{i}@example.com")
        assert msg.get_content_type() == "multipart/mixed"
        related = msg.get_payload()[0]
        assert related.get_content_type() == "multipart/related"
        assert related.get_payload()[0].get_content_type() == "multipart/alternative"
        parts = {p.get_filename(): p for p in files_of(msg)}
        assert set(parts) == {"Guide für Zürich 指南.pdf", "notes.txt", f"ticket-C-{i}.pdf",
                              "attachment.png", "image-1.gif"}
        assert parts["Guide für Zürich 指南.pdf"].get_content() == guide
        assert parts["Guide für Zürich 指南.pdf"].get_content_type() == "application/pdf"
        assert parts[f"ticket-C-{i}.pdf"].get_content() == ticket[i]       # its own only
        assert f"ticket-C-{1 - i}.pdf" not in parts
        assert parts["notes.txt"].get_content_type() == "text/plain"
        html = msg.get_body(("html",)).get_content()
        cids = {p["Content-ID"].strip("<>"): p for p in files_of(msg) if p["Content-ID"]}
        assert "logo" in cids and cids["logo"].get_content() == logo
        assert cids["logo"].get_content_disposition() == "inline"
        referenced = [c for c in cids if f"cid:{c}" in html]
        assert sorted(referenced) == sorted(cids)                        # every cid resolves
        assert "data:image" not in html
        (gif,) = [p for c, p in cids.items() if c != "logo"]
        assert gif.get_content() == dot and gif.get_content_type() == "image/gif"


def test_gmail_gets_a_20_mb_message_through_the_upload_endpoint(
        client, key, dao, fake, gmail_settings):
    data = os.urandom(15 * 1024 * 1024)   # 20 MB once base64
    att = upload(client, key, data, content_type="application/octet-stream",
                 filename="data.bin").json["id"]
    job_id = post(client, key, body(1, attachments=[{"id": att}])).json["job_id"]
    with running(gmail_settings, dao):
        assert wait_job_done(dao, job_id, timeout=60) == "completed"
    (got,) = fake.sent_to("user0@example.com")
    assert len(got.raw) > 20 * 1024 * 1024
    (part,) = files_of(parse(got.raw))
    assert part.get_filename() == "data.bin" and part.get_content() == data
    uploads = [path for method, path, status in fake.requests if "/upload/" in path]
    assert any("uploadType=resumable" in p for p in uploads), fake.requests
    assert fake.uploads and fake.uploads[-1]["protocol"] == "resumable"


def test_the_dashboard_shows_the_jobs_and_a_recipients_attachments(client, key, make_key, dao):
    from test_dashboard import login

    shared = upload(client, key, os.urandom(4200), filename="guide.pdf").json["id"]
    own = upload(client, key, os.urandom(1500)).json["id"]
    b = body(2, attachments=[{"id": shared}])
    b["recipients"][0]["attachments"] = [{"id": own, "filename": "ticket-{{ n }}.pdf"}]
    job_id = post(client, key, b).json["job_id"]
    login(client, make_key(operator=True, name="op"))
    page = client.get(f"/dashboard/jobs/{job_id}").get_data(as_text=True)
    assert "guide.pdf" in page and "4.2 kB" in page
    trace = client.get("/dashboard/recipients?email=user0@example.com").get_data(as_text=True)
    assert "guide.pdf" in trace and "ticket-{{ n }}.pdf" in trace.replace("&#34;", '"')
    other = client.get("/dashboard/recipients?email=user1@example.com").get_data(as_text=True)
    assert "guide.pdf" in other and "ticket-" not in other


def test_the_cache_of_shared_files_keeps_within_its_bytes():
    from mailjobs.attachments.store import FileCache

    cache = FileCache(max_bytes=250)
    loads: list[int] = []

    def load(key: int, size: int):
        return lambda: loads.append(key) or bytes(size)

    for key in (1, 2, 1, 3, 1, 4):
        cache.get(key, load(key, 100))
    assert cache.size <= 250
    assert loads == [1, 2, 3, 4]          # 1 stayed (recently used); 2 went out for 3, ...
    cache.get(2, load(2, 100))
    assert loads[-1] == 2
    assert cache.get(9, load(9, 1000)) == bytes(1000) and cache.size <= 250   # never kept


def test_smtp_carries_the_same_files(client, key, dao, start_server):  # noqa: F811
    handler, port = start_server()
    settings = fast(dao.settings, mail_transport="smtp", smtp_host="127.0.0.1", smtp_port=port,
                    smtp_security="none", smtp_timeout=5.0, runner_concurrency=1)
    data = os.urandom(1_500_000)
    att = upload(client, key, data, filename="Bericht März.pdf").json["id"]
    job_id = post(client, key, body(1, attachments=[{"id": att}])).json["job_id"]
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    (got,) = handler.received("user0@example.com")
    (part,) = files_of(parse(got))
    assert part.get_filename() == "Bericht März.pdf" and part.get_content() == data


def test_the_upload_budget_may_be_above_max_request_bytes(dao, make_key, database):
    from mailjobs.api_server import create_app

    settings = dao.settings.with_overrides(max_request_bytes=1_000_000,
                                           attachment_max_bytes=3_000_000)
    client = create_app(settings, dao).test_client()
    key = make_key()
    data = os.urandom(2_000_000)
    response = upload(client, key, data)
    assert response.status_code == 201 and response.json["size"] == len(data)
    assert upload(client, key, os.urandom(3_000_001)).status_code == 413
