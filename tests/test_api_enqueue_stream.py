"""The streaming enqueue (issue 17): recipients checked and stored a chunk at a time in one
transaction, against a real MariaDB. All or nothing, whatever chunk the fault is in."""
from __future__ import annotations

import io
import json
import socket
import threading

import pytest
from waitress.server import create_server

from mailjobs import defaults
from mailjobs.api_server import create_app
from runner_helpers import count_rows

URL = "/api/jobs/send_template_emails"


def body(n: int, **changes):
    b = {"sender_email": "ops@example.com", "from_name": "Ops",
         "template": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}, {{ n }}"},
         "recipients": [{"email": f"user{i}@example.com", "name": f"User {i}",
                         "variables": {"n": i}} for i in range(n)]}
    b.update(changes)
    return b


def post(client, key, payload):
    data = payload if isinstance(payload, bytes) else json.dumps(payload)
    return client.post(URL, data=data, content_type="application/json",
                       headers={"X-API-Key": key})


def assert_nothing_written(dao):
    assert count_rows(dao, "jobs") == 0
    assert count_rows(dao, "job_recipients") == 0


def stored(dao, job_id):
    with dao.transaction() as cur:
        cur.execute("SELECT to_email, name, variables FROM job_recipients WHERE job_id = %s "
                    "ORDER BY id", (job_id,))
        return [(e, n, json.loads(v) if v else None) for e, n, v in cur.fetchall()]


@pytest.fixture()
def small_chunks(monkeypatch):
    """Chunks of 3 recipients, bodies of more than 4 streamed, INSERTs of 4 rows: a short list
    crosses several chunk and statement boundaries."""
    monkeypatch.setattr(defaults, "ENQUEUE_CHUNK", 3)
    monkeypatch.setattr(defaults, "INSERT_BATCH", 4)


def test_a_bad_address_at_the_end_of_100000_writes_nothing_and_is_named(client, make_key, dao):
    key = make_key(senders=["*"])
    b = body(100_000)
    b["recipients"][99_999]["email"] = "not-an-address"
    r = post(client, key, b)
    assert r.status_code == 400, r.json
    assert (r.json["error"], r.json["field"]) == ("validation_error", "recipients[99999].email")
    assert "errors" not in r.json   # only one field at fault
    assert_nothing_written(dao)


def test_duplicates_across_chunk_boundaries_are_removed(client, key, dao, small_chunks):
    b = body(8)
    # chunks [0-2] [3-5] [6-8] [9-10]: repeats of an earlier chunk's addresses, other spellings
    b["recipients"] += [{"email": "USER1@example.com", "name": "Again", "variables": {"n": 1}},
                        {"email": "user7@EXAMPLE.com", "name": "X", "variables": {"n": 7}},
                        {"email": "User4@Example.Com", "name": "Y", "variables": {"n": 4}}]
    r = post(client, key, b)
    assert r.status_code == 202, r.json
    assert (r.json["recipients"], r.json["duplicates_removed"]) == (8, 3)
    assert stored(dao, r.json["job_id"]) == [
        (f"user{i}@example.com", f"User {i}", {"n": i}) for i in range(8)]
    job = dao.job(r.json["job_id"])
    assert (job.total, job.duplicates_removed) == (8, 3)


def test_a_fault_in_a_later_chunk_rolls_back_the_chunks_stored_before(client, key, dao,
                                                                       small_chunks):
    b = body(10)
    del b["recipients"][8]["variables"]      # chunk 3: {{ n }} is missing
    r = post(client, key, b)
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (400, "missing_variables", "recipients[8].variables")
    assert_nothing_written(dao)


def test_the_first_kind_of_fault_wins_whatever_chunk_it_is_in(client, key, dao, small_chunks):
    """As when every check looked at the whole list in turn: schema faults first (here in the
    last chunk), then missing variables (here in the first), each listed in order."""
    b = body(10)
    del b["recipients"][1]["variables"]
    del b["recipients"][5]["variables"]
    b["recipients"][9]["email"] = "broken"
    b["recipients"][7]["colour"] = "red"
    r = post(client, key, b)
    assert (r.status_code, r.json["error"]) == (400, "validation_error")
    assert [e["field"] for e in r.json["errors"]] == ["recipients[7].colour",
                                                      "recipients[9].email"]
    b["recipients"][9]["email"] = "user9@example.com"
    del b["recipients"][7]["colour"]
    r = post(client, key, b)
    assert (r.status_code, r.json["error"]) == (400, "missing_variables")
    assert [e["field"] for e in r.json["errors"]] == ["recipients[1].variables",
                                                      "recipients[5].variables"]
    assert_nothing_written(dao)


def test_up_to_twenty_faults_are_listed_over_several_chunks(client, key, dao, small_chunks):
    b = body(30)
    for r in b["recipients"]:
        r["email"] = "broken"
    r = post(client, key, b)
    assert r.status_code == 400
    assert [e["field"] for e in r.json["errors"]] == [f"recipients[{i}].email"
                                                      for i in range(20)]
    assert_nothing_written(dao)


def test_chunked_and_whole_body_answers_agree(client, key, dao, monkeypatch):
    """Bodies the splitter does not take (NaN: not strict JSON) are validated whole; the
    answer for the same fault is the same either way."""
    b = body(7)
    b["recipients"][4]["name"] = "B\r\nX-Evil: 1"
    for chunk, whole in ((2, 3), (defaults.ENQUEUE_CHUNK, defaults.INSERT_BATCH)):
        monkeypatch.setattr(defaults, "ENQUEUE_CHUNK", chunk)
        monkeypatch.setattr(defaults, "INSERT_BATCH", whole)
        r = post(client, key, b)
        assert (r.status_code, r.json["field"]) == (400, "recipients[4].name")
        assert r.json["message"].startswith("recipients[4].name: must not contain CR")
    raw = json.dumps(b).replace('"variables": {"n": 0}', '"variables": {"n": NaN}')
    r = post(client, key, raw.encode())
    assert (r.status_code, r.json["field"]) == (400, "recipients[0].variables")
    assert_nothing_written(dao)


def test_a_body_shorter_than_its_content_length_writes_nothing(client, key, dao):
    """The WSGI input ends before Content-Length (a client gone mid-body under a server that
    streams the body to the app, as gunicorn does): 400, nothing stored."""
    data = json.dumps(body(2000)).encode()
    r = client.post(URL, input_stream=io.BytesIO(data[: len(data) // 2]),
                    content_type="application/json", headers={"X-API-Key": key},
                    environ_overrides={"CONTENT_LENGTH": str(len(data)),
                                       "wsgi.input_terminated": False})
    assert r.status_code == 400
    assert r.json["error"] != "invalid_json", r.json   # not parsed: the body is known to be cut
    assert_nothing_written(dao)


def test_a_client_that_disconnects_mid_body_leaves_nothing_written(dao, key):
    """Over a real socket to waitress (the server of `mailjobs serve`): half the body, then
    the connection closed. A whole request on another connection afterwards is stored; the
    cut one is not."""
    app = create_app(dao.settings, dao)
    server = create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        port = server.socket.getsockname()[1]
        data = json.dumps(body(20_000)).encode()
        head = (f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"X-API-Key: {key}\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head + data[: len(data) // 2])
        whole = json.dumps(body(3)).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(head.replace(str(len(data)).encode(), str(len(whole)).encode()) + whole)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
        assert count_rows(dao, "jobs") == 1
        assert count_rows(dao, "job_recipients") == 3
    finally:
        server.close()
        thread.join(10)


def test_a_content_length_over_the_limit_is_413_before_anything_is_read(client, key, dao):
    """The body is read into one buffer of its Content-Length: a claimed terabyte is refused,
    never allocated."""
    r = client.post(URL, input_stream=io.BytesIO(b"{}"), content_type="application/json",
                    headers={"X-API-Key": key},
                    environ_overrides={"CONTENT_LENGTH": str(10**12),
                                       "wsgi.input_terminated": False})
    assert (r.status_code, r.json["error"]) == (413, "payload_too_large")
    assert_nothing_written(dao)


def test_a_recipient_too_large_to_store_in_a_later_chunk_is_413_and_nothing_is_written(
        client, key, dao, small_chunks):
    packet = dao.max_packet_bytes()
    if packet > 40 * 1024 * 1024:
        pytest.skip(f"max_allowed_packet is {packet}: a body over it passes MAX_REQUEST_BYTES")
    b = body(7)
    b["recipients"][5]["variables"]["blob"] = "x" * (packet // 2 + 1024)
    r = post(client, key, b)
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (413, "payload_too_large", "recipients[5].variables"), r.json
    assert "max_allowed_packet" in r.json["message"]
    assert_nothing_written(dao)
