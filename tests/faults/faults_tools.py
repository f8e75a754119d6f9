"""Helpers of the fault suite: scale, jobs, bounded waits and the exactly-once bookkeeping.

FAULTS_SCALE (float, default 1) multiplies sizes (recipients) linearly, and durations and kill
counts by its square root: the default run is 600 recipients, 5 kills, the database down 8 s, a
15 s failure storm; FAULTS_SCALE=16.6667 is 10,000 recipients, 20 kills, 33 s down, a 61 s storm.
FAULTS_REPORT=<file> appends each scenario's figures there as JSON lines.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable

import runner_helpers

SCALE = float(os.environ.get("FAULTS_SCALE") or 1)
ROOT_SCALE = math.sqrt(SCALE)
FINAL = ("completed", "completed_with_errors", "failed", "cancelled")
MESSAGE_ID = re.compile(r"<mj\.(\d+)\.(\d+)\.")


def size(n: int) -> int:
    """A recipient count, scaled."""
    return max(1, round(n * SCALE))


def duration(seconds: float) -> float:
    """A duration (or a count of events), scaled by the square root of FAULTS_SCALE."""
    return seconds * ROOT_SCALE


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def job_body(n: int, prefix: str = "u", sender: str = "ops@example.com") -> dict:
    return {"sender_email": sender, "from_name": "Ops", "reply_to": "help@example.com",
            "template": {"subject": "Hi {{ name }}", "text": "Hello {{ name }} ({{ n }})",
                         "html": "<p>Hello {{ name }} from {{ company }}</p>"},
            "variables": {"company": "Acme"},
            "recipients": [{"email": f"{prefix}{i:05d}@example.com", "name": f"User {i}",
                            "variables": {"n": i}} for i in range(n)]}


def post_job(client, key: str, n: int, prefix: str = "u") -> int:
    r = client.post("/api/jobs/send_template_emails", json=job_body(n, prefix), headers=h(key))
    assert r.status_code == 202, r.json
    return r.json["job_id"]


def wait_for(condition: Callable[[], object], timeout: float, message: str,
             every: float = 0.1, on_timeout: Callable[[], str] | None = None) -> object:
    """runner_helpers.wait_for with the message as third argument, as the fault tests read."""
    return runner_helpers.wait_for(condition, timeout, every, message, on_timeout)


def wait_final(dao, job_id: int, timeout: float, fleet=None) -> str:
    def status():
        st = dao.job(job_id).status
        return st if st in FINAL else None

    def why() -> str:
        tail = ""
        if fleet is not None:
            tail = "\n" + "\n".join(fleet.output().splitlines()[-60:])
        return f"; counts {dao.recipient_counts(job_id)}, status {dao.job(job_id).status}{tail}"
    return wait_for(status, timeout, f"job {job_id} to finish", 0.2, why)


def sends_of_job(fake, job_id: int) -> Counter:
    """How many messages of this job the fake Gmail accepted, per To address.

    Indexed incrementally (fake.sent only grows), so polling it stays cheap at 10,000s of
    messages: the fake runs in this process and must not be starved."""
    done, index = getattr(fake, "_faults_index", (0, {}))
    sent = fake.sent[done:] if len(fake.sent) >= done else None
    if sent is None:                       # the fake was reset: start again
        done, index, sent = 0, {}, list(fake.sent)
    for s in sent:
        m = MESSAGE_ID.match(s.message["Message-ID"] or "")
        if m:
            to = s.message["To"].addresses[0].addr_spec.lower()
            index.setdefault(int(m.group(1)), Counter())[to] += 1
    fake._faults_index = (done + len(sent), index)
    return Counter(index.get(job_id, {}))


def all_recipients(dao, job_id: int):
    return dao.recipients_page(job_id, None, 0, 1_000_000)


def check_counts(client, key: str, dao, job_id: int) -> dict[str, int]:
    """The job's counts (API and DAO) match its rows and its total; returns them."""
    rows = all_recipients(dao, job_id)
    from_rows = dict(Counter(r.status for r in rows))
    job = client.get(f"/api/jobs/{job_id}", headers=h(key)).json
    assert job["counts"] == from_rows, (job["counts"], from_rows)
    assert dao.recipient_counts(job_id) == from_rows
    assert sum(from_rows.values()) == job["total"] == len(rows)
    return from_rows


def duplicates(sends: Counter) -> int:
    """Messages beyond the first per address."""
    return sum(n - 1 for n in sends.values() if n > 1)


def assert_exactly_once(fake, dao, job_id: int, n: int) -> Counter:
    """Every recipient is `sent` in the DB, and the fake Gmail holds exactly one message to it
    whose Gmail id the row recorded."""
    rows = all_recipients(dao, job_id)
    sends = sends_of_job(fake, job_id)
    assert len(rows) == n
    not_sent = [(r.to_email, r.status, r.error_code, r.error) for r in rows if r.status != "sent"]
    assert not not_sent, f"{len(not_sent)} not sent, e.g. {not_sent[:5]}"
    dup = {a: k for a, k in sends.items() if k > 1}
    assert not dup, f"{len(dup)} recipient(s) got more than one message: {list(dup.items())[:10]}"
    missing = {r.to_email for r in rows} - set(sends)
    assert not missing, f"{len(missing)} 'sent' but never reached Gmail: {sorted(missing)[:10]}"
    ids = {s.id for s in fake.sent if (m := MESSAGE_ID.match(s.message["Message-ID"] or ""))
           and int(m.group(1)) == job_id}
    assert {r.gmail_message_id for r in rows} == ids
    return sends


def report(name: str, **figures) -> None:
    """Print a scenario's figures (pytest -s shows them) and append them to FAULTS_REPORT."""
    line = {"scenario": name, "scale": SCALE, **figures}
    print(f"\nFAULTS {json.dumps(line)}")
    path = os.environ.get("FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
