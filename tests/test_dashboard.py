"""The operators' dashboard (/dashboard): login with an operator key, the session cookie, the
four pages and their escaping through Flask's test client; then the same pages in a real
headless Chromium driven by Playwright, which also saves the screenshots in docs/."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailjobs.api_server import create_app
from mailjobs.dashboard import pages as dashboard
from runner_helpers import fast, running, wait_job_done
from test_api_enqueue import body, post

ROOT = Path(__file__).resolve().parents[1]
# The README's screenshots are refreshed only on request (UPDATE_SCREENSHOTS=1 make test), so a
# test run never dirties the working tree; otherwise they go to a temporary directory.
DOCS = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else None
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def op_key(make_key) -> str:
    return make_key(senders=[], operator=True, name="ops-dashboard")


def login(client, key: str, next_url: str | None = None, **request_args):
    data = {"api_key": key, **({"next": next_url} if next_url else {})}
    return client.post("/dashboard/login", data=data, **request_args)


def sql(dao, statement: str, args=None) -> None:
    with dao.transaction() as cur:
        cur.execute(statement, args)


# --- login, session, logout ----------------------------------------------------------------
def test_an_operator_key_logs_in_and_gets_a_signed_httponly_lax_cookie(client, op_key):
    r = client.get("/dashboard/")
    assert r.status_code == 302
    assert r.headers["Location"] == "/dashboard/login?next=/dashboard/"
    page = client.get("/dashboard/login?next=/dashboard/")
    assert page.status_code == 200 and 'name="api_key"' in page.text
    r = login(client, op_key, "/dashboard/runners")
    assert (r.status_code, r.headers["Location"]) == (302, "/dashboard/runners")
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("mailjobs_dashboard=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/dashboard" in cookie
    assert op_key not in cookie  # only the key's id is kept, signed
    jobs = client.get("/dashboard/")
    assert jobs.status_code == 200 and "<h1>Jobs</h1>" in jobs.text
    assert "ops-dashboard" in jobs.text  # who is logged in
    assert "script-src" not in jobs.headers["Content-Security-Policy"]  # no script may run
    assert "default-src 'none'" in jobs.headers["Content-Security-Policy"]
    out = client.post("/dashboard/logout")
    assert (out.status_code, out.headers["Location"]) == (302, "/dashboard/login?logged_out=1")
    assert client.get("/dashboard/").status_code == 302


def test_a_non_operator_key_and_a_wrong_key_are_refused(client, key, op_key):
    refused = login(client, key)
    assert refused.status_code == 403 and "not an operator key" in refused.text
    assert "Set-Cookie" not in refused.headers
    prefix = "mj_" + op_key.split("_")[1]
    for wrong in (prefix + "_not-the-secret", "mj_nothere_secret", "garbage", ""):
        r = login(client, wrong)
        assert r.status_code == 401 and "unknown or revoked" in r.text, wrong
        assert "Set-Cookie" not in r.headers
    assert client.get("/dashboard/").status_code == 302


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/?status=failed", "/dashboard/jobs/1",
                                  "/dashboard/jobs/1?failed_after=5", "/dashboard/runners",
                                  "/dashboard/senders", "/dashboard/recipients?email=a@b.org"])
def test_every_page_redirects_to_the_login_when_logged_out(client, path):
    r = client.get(path)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/dashboard/login?next=/dashboard/")


def test_a_forged_cookie_and_an_outside_next_are_not_honoured(app, client, op_key):
    from flask.sessions import SecureCookieSessionInterface

    class Forger:  # what an attacker could sign without the server's secret key
        secret_key = "not-the-servers-key"
        config = app.config
    forged = SecureCookieSessionInterface().get_signing_serializer(Forger).dumps({"key_id": 1})
    client.set_cookie("mailjobs_dashboard", forged, path="/dashboard")
    assert client.get("/dashboard/").status_code == 302
    for outside in ("//evil.example/", "https://evil.example/dashboard", "/api/jobs",
                    "/dashboard\\@evil"):
        assert login(client, op_key, outside).headers["Location"] == "/dashboard/"


def test_a_revoked_keys_session_stops_at_once(client, op_key, dao):
    login(client, op_key)
    assert client.get("/dashboard/runners").status_code == 200
    assert dao.revoke_api_key(op_key.split("_")[1])
    r = client.get("/dashboard/runners")
    assert r.status_code == 302 and r.headers["Location"].startswith("/dashboard/login")
    assert login(client, op_key).status_code == 401


def test_the_cookie_is_secure_when_the_request_came_over_https(app, op_key):
    plain = login(app.test_client(), op_key).headers["Set-Cookie"]
    assert "Secure" not in plain           # http://localhost in development: no Secure
    secure = login(app.test_client(), op_key, None, base_url="https://mail.example.com")
    cookie = secure.headers["Set-Cookie"]
    assert cookie.startswith("mailjobs_dashboard=") and "; Secure" in cookie


def test_logging_out_ends_the_session_even_for_a_copy_of_the_cookie(client, op_key):
    r = login(client, op_key)
    stolen = r.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]
    assert client.get("/dashboard/runners").status_code == 200
    assert client.post("/dashboard/logout").status_code == 302
    client.set_cookie("mailjobs_dashboard", stolen, path="/dashboard")   # the old cookie
    r = client.get("/dashboard/runners")
    assert r.status_code == 302 and r.headers["Location"].startswith("/dashboard/login")


def test_the_dev_secret_key_is_generated_0600_and_reused(tmp_path, monkeypatch, dao):
    monkeypatch.setattr(dashboard, "DEV_SECRET_FILE", tmp_path / "var" / "secret_key")
    first = dashboard.secret_key(dao.settings)
    assert len(first) >= 48
    assert stat.S_IMODE((tmp_path / "var" / "secret_key").stat().st_mode) == 0o600
    assert dashboard.secret_key(dao.settings) == first
    assert create_app(dao.settings, dao).secret_key == first
    assert dashboard.secret_key(dao.settings.with_overrides(secret_key="set")) == "set"
    assert sorted(p.name for p in (tmp_path / "var").iterdir()) == ["secret_key"]


# --- pages -------------------------------------------------------------------------------
def test_jobs_are_listed_newest_first_with_progress_and_pages(client, key, op_key, dao,
                                                              monkeypatch):
    ids = [post(client, key, body(4)).json["job_id"] for _ in range(3)]
    sql(dao, "UPDATE job_recipients SET status='sent', sent_at=UTC_TIMESTAMP(6) "
             "WHERE job_id=%s AND to_email IN ('user0@example.com','user1@example.com')", (ids[2],))
    sql(dao, "UPDATE job_recipients SET status='failed', error_code='gmail_400' "
             "WHERE job_id=%s AND to_email='user3@example.com'", (ids[2],))
    monkeypatch.setattr(dashboard, "JOBS_PER_PAGE", 2)
    login(client, op_key)
    first = client.get("/dashboard/").text
    shown = [int(i) for i in re.findall(r'href="/dashboard/jobs/(\d+)"', first)]
    assert shown == [ids[2], ids[1]]
    assert re.search(r"<b>2</b> sent · <span class=\"f\">1 failed</span> · 4 total", first)
    assert f'href="/dashboard/?before={ids[1]}"' in first
    second = client.get(f"/dashboard/?before={ids[1]}").text
    assert [int(i) for i in re.findall(r'href="/dashboard/jobs/(\d+)"', second)] == [ids[0]]
    assert "Older" not in second and "Newest" in second
    assert client.get("/dashboard/?status=queued").text.count('href="/dashboard/jobs/') == 2
    assert client.get("/dashboard/?status=lost").status_code == 400
    assert client.get("/dashboard/?before=x").status_code == 400


def test_job_page_shows_counts_errors_and_failed_recipients_with_a_keyset_link(
        client, key, op_key, dao, monkeypatch):
    job_id = post(client, key, body(6)).json["job_id"]
    sql(dao, "UPDATE job_recipients SET status='failed', error_code='gmail_400', "
             "error='Gmail 400 invalidArgument: Invalid To header' WHERE job_id=%s AND "
             "to_email IN ('user1@example.com','user2@example.com','user3@example.com')",
        (job_id,))
    sql(dao, "UPDATE job_recipients SET status='failed', error_code='template_error', "
             "error='undefined variable' WHERE job_id=%s AND to_email='user4@example.com'",
        (job_id,))
    monkeypatch.setattr(dashboard, "FAILED_PER_PAGE", 3)
    login(client, op_key)
    page = client.get(f"/dashboard/jobs/{job_id}").text
    assert "gmail_400" in page and "Invalid To header" in page and "template_error" in page
    assert re.search(r'<div class="n">4</div><div class="l">failed</div>', page)
    assert re.search(r'<div class="n">2</div><div class="l">queued</div>', page)
    assert "Nothing sent yet" in page
    listed = re.findall(r"user(\d)@example.com", page.split('id="failed"')[1])
    assert listed == ["1", "2", "3"]
    more = re.search(r'href="/dashboard/jobs/\d+\?failed_after=(\d+)#failed"', page)
    rest = client.get(f"/dashboard/jobs/{job_id}?failed_after={more.group(1)}").text
    assert re.findall(r"user(\d)@example.com", rest.split('id="failed"')[1]) == ["4"]
    missing = client.get("/dashboard/jobs/987654")
    assert missing.status_code == 404 and "no job 987654" in missing.text
    assert missing.mimetype == "text/html"


def test_hostile_job_fields_are_escaped(client, key, op_key, dao):
    hostile = "<script>alert(1)</script>"
    b = body(2, from_name=hostile)
    b["template"]["subject"] = "<img src=x onerror=alert(2)> {{ name }}"
    job_id = post(client, key, b).json["job_id"]
    sql(dao, "UPDATE job_recipients SET status='failed', to_email=%s, name=%s, "
             "error_code=%s, error=%s WHERE job_id=%s AND to_email='user0@example.com'",
        ("<script>alert(3)</script>@evil.example", '"><svg onload=alert(4)>',
         "<b>code</b>", "</td><script>alert(5)</script>", job_id))
    sql(dao, "UPDATE jobs SET status_reason=%s WHERE id=%s", (hostile, job_id))
    login(client, op_key)
    for path in ("/dashboard/", f"/dashboard/jobs/{job_id}"):
        html = client.get(path).text
        assert "<script" not in html and "<img src=x" not in html and "<svg onload" not in html
        assert "<b>code</b>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    html = client.get(f"/dashboard/jobs/{job_id}").text
    assert "&lt;script&gt;alert(3)&lt;/script&gt;@evil.example" in html
    assert "&lt;/td&gt;&lt;script&gt;alert(5)&lt;/script&gt;" in html
    assert "&lt;b&gt;code&lt;/b&gt;" in html


def test_the_send_rate_chart_has_one_bar_per_minute_with_sends(client, key, op_key, dao):
    job_id = post(client, key, body(10)).json["job_id"]
    base = datetime.now(UTC).replace(second=0, microsecond=0, tzinfo=None) \
        - timedelta(minutes=30)
    for offset, emails in ((0, range(0, 4)), (1, range(4, 7)), (5, range(7, 10))):
        sql(dao, "UPDATE job_recipients SET status='sent', sent_at=%s WHERE job_id=%s AND "
                 f"to_email IN ({', '.join(['%s'] * len(emails))})",
            (base + timedelta(minutes=offset, seconds=17), job_id,
             *[f"user{i}@example.com" for i in emails]))
    utc = base.replace(tzinfo=UTC)
    assert dao.send_rate(job_id) == [(utc, 4), (utc + timedelta(minutes=1), 3),
                                     (utc + timedelta(minutes=5), 3)]
    login(client, op_key)
    page = client.get(f"/dashboard/jobs/{job_id}").text
    svg = re.search(r"<svg class=\"chart\".*?</svg>", page, re.S).group(0)
    minutes = re.findall(r'<rect class="sendbar" data-minute="([^"]+)"', svg)
    assert minutes == [(utc + timedelta(minutes=m)).isoformat() for m in (0, 1, 5)]
    heights = [float(h) for h in re.findall(r'class="sendbar"[^>]* height="([\d.]+)"', svg)]
    assert heights[0] > heights[1] == heights[2] > 0
    assert "peak 4/min" in page and "10 sent between" in page


def test_a_long_job_is_charted_in_buckets_of_several_minutes():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    points = [(start + timedelta(minutes=m), 60) for m in range(0, 1000, 2)]
    chart = dashboard.send_rate_chart(points)
    assert chart["bucket"] == 10 and len(chart["bars"]) == 100
    assert chart["peak"] == "30" and chart["minutes"] == 999
    assert dashboard.send_rate_chart([]) is None


def test_the_address_page_traces_every_keys_jobs_and_escapes_what_it_shows(
        client, key, make_key, op_key, dao):
    other = make_key(senders=["*"], name="other-app")
    mine = post(client, key, body(2)).json["job_id"]
    theirs = post(client, other, body(1)).json["job_id"]
    sql(dao, "UPDATE job_recipients SET status='failed', error_code='gmail_400', "
             "error='<script>alert(1)</script> Invalid To' WHERE job_id=%s", (theirs,))
    client.post("/api/suppressions", json={"email": "user0@example.com"},
                headers={"X-API-Key": key})
    login(client, op_key)
    empty = client.get("/dashboard/recipients")
    assert empty.status_code == 200 and 'id="find-email"' in empty.text
    page = client.get("/dashboard/recipients", query_string={"email": "USER0@example.com"})
    assert page.status_code == 200
    assert page.text.count('href="/dashboard/jobs/') >= 2
    rows = page.text.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    assert [f"job {theirs}" in rows[0], f"job {mine}" in rows[1]] == [True, True]  # newest first
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>" not in page.text
    assert "gmail_400" in rows[0] and "st-queued" in rows[1]
    assert "for API key" in page.text and "manual" in page.text              # suppressed
    bad = client.get("/dashboard/recipients", query_string={"email": "<b>nope"})
    assert bad.status_code == 400 and "not an email address" in bad.text
    assert "<b>nope" not in bad.text
    none = client.get("/dashboard/recipients", query_string={"email": "nobody@example.com"})
    assert "No job has had" in none.text


def test_runners_page_marks_a_stale_runner_and_senders_show_quota(client, op_key, dao):
    make_runners(dao)
    make_senders(dao)
    login(client, op_key)
    runners = client.get("/dashboard/runners").text
    stale_row = re.search(r'<tr class="stale">.*?</tr>', runners, re.S).group(0)
    assert "r-mail-2-3107-c4d5e6" in stale_row and "7 min" in stale_row
    assert runners.count('<tr class="stale">') == 1 and "1 alive" in runners
    senders = client.get("/dashboard/senders").text
    assert "<b>412</b> / 500" in senders and "auth revoked" in senders
    assert "invalid_grant" in senders and "credentials stored" in senders
    assert "mailjobs auth news@example.org" in senders  # its jobs wait for a new grant


def test_senders_page_says_outbox_mode_instead_of_missing_credentials(dao, op_key):
    from mailjobs.api_server import create_app

    dao.set_sender_limits("new@example.com", 60, 2000)      # a sender without credentials
    for transport, says, not_said in (("outbox", "not needed: outbox", "no credentials stored"),
                                      ("gmail", "no credentials stored", "not needed")):
        client = create_app(dao.settings.with_overrides(mail_transport=transport),
                            dao).test_client()
        login(client, op_key)
        page = client.get("/dashboard/senders").text
        assert says in page and not_said not in page, transport
        assert ("MAIL_TRANSPORT is <b>outbox</b>" in page) == (transport == "outbox")


# --- a realistic state, shared with the browser test ---------------------------------------
def make_runners(dao) -> None:
    """One live runner and one whose heartbeat stopped 7 minutes ago (crashed)."""
    dao.runner_heartbeat({"id": "r-mail-1-4821-a1b2c3", "host": "mail-1", "pid": 4821,
                          "kind": "worker", "state": "busy", "job": None, "sent": 1284,
                          "failed": 23})
    dao.runner_heartbeat({"id": "r-mail-2-3107-c4d5e6", "host": "mail-2", "pid": 3107,
                          "kind": "worker", "state": "busy", "job": None, "sent": 977,
                          "failed": 11})
    sql(dao, "UPDATE runners SET heartbeat_at = UTC_TIMESTAMP(6) - INTERVAL 425 SECOND, "
             "started_at = UTC_TIMESTAMP(6) - INTERVAL 3 HOUR WHERE id = 'r-mail-2-3107-c4d5e6'")
    sql(dao, "UPDATE runners SET started_at = UTC_TIMESTAMP(6) - INTERVAL 5 HOUR "
             "WHERE id = 'r-mail-1-4821-a1b2c3'")


def make_senders(dao) -> None:
    """ops@ authorised with its limits; news@ revoked and close to its daily cap."""
    for sender in ("ops@example.com", "news@example.org"):
        dao.save_sender_credentials(sender, b"encrypted-elsewhere", resume=True)
    dao.set_sender_limits("ops@example.com", 60, 2000)
    dao.set_sender_limits("news@example.org", 30, 500)
    dao.pause_sender("news@example.org", "auth_revoked",
                     "invalid_grant: Token has been expired or revoked.", "sender_auth")
    sql(dao, "INSERT INTO sender_hourly_sends (sender_email, hour_start, sends) VALUES "
             "('news@example.org', DATE_FORMAT(UTC_TIMESTAMP() - INTERVAL 3 HOUR, "
             "'%Y-%m-%d %H:00:00'), 412)")


def realistic_state(client, dao, make_key, tmp_path) -> dict[str, int]:
    """Jobs in every interesting state, built through the API and a real runner."""
    app_key = make_key(senders=["*"], name="newsletter-app")
    # 1: sent by a real runner; 14 template errors (real) and 9 rejected addresses
    b = body(240)
    b["template"]["text"] = "Hello {{ name }}, your code is {{ n + 1 }}"
    b["template"]["subject"] = "Your November statement, {{ name }}"
    for i, r in enumerate(b["recipients"]):
        r["variables"] = {"n": "x" if i % 17 == 5 else i}
    main = post(client, app_key, b).json["job_id"]
    sql(dao, "UPDATE job_recipients SET status='failed', error_code='gmail_400', error="
             "'Gmail 400 invalidArgument: Invalid To header' WHERE job_id=%s AND id %% 26 = 3",
        (main,))
    done = post(client, app_key, body(50, from_name="Acme Support")).json["job_id"]
    with running(fast(dao.settings, mail_transport="null", sender_daily_cap=2000,
                      runner_concurrency=8), dao):
        wait_job_done(dao, main)
        wait_job_done(dao, done)
    # spread the sends over minutes at about the sender's 60/min, as Gmail's limit makes them
    now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    with dao.transaction() as cur:
        cur.execute("SELECT id FROM job_recipients WHERE job_id=%s AND status='sent' "
                    "ORDER BY id", (main,))
        ids = [r[0] for r in cur.fetchall()]
        shape = [9, 24, 37, 39, 38, 12, 0, 21, 0]  # the last minute takes the rest
        start = now - timedelta(minutes=52)
        minute, used = 0, 0
        for rid in ids:
            while minute < len(shape) - 1 and used >= shape[minute]:
                minute, used = minute + 1, 0
            used += 1
            cur.execute("UPDATE job_recipients SET sent_at=%s WHERE id=%s",
                        (start + timedelta(minutes=minute, seconds=used % 60), rid))
        cur.execute("UPDATE jobs SET created_at=%s, started_at=%s, finished_at=%s WHERE id=%s",
                    (start - timedelta(minutes=2), start, start + timedelta(minutes=9, seconds=4),
                     main))
        cur.execute("UPDATE job_recipients SET sent_at=%s WHERE job_id=%s",
                    (now - timedelta(minutes=31), done))
        cur.execute("UPDATE jobs SET created_at=%s, started_at=%s, finished_at=%s WHERE id=%s",
                    (now - timedelta(minutes=33), now - timedelta(minutes=32),
                     now - timedelta(minutes=31), done))
    # 3: running right now (sent by the live runner below)
    live = post(client, app_key, body(500, from_name="Acme Billing")).json["job_id"]
    sql(dao, "UPDATE job_recipients SET status='sent', sent_at=UTC_TIMESTAMP(6) - INTERVAL "
             "(id %% 240) SECOND WHERE job_id=%s AND id %% 500 < 180", (live,))
    sql(dao, "UPDATE job_recipients SET status='failed', error_code='gmail_400', error='Gmail "
             "400 invalidArgument: Invalid To header' WHERE job_id=%s AND id %% 500 "
             "BETWEEN 200 AND 203", (live,))
    sql(dao, "UPDATE jobs SET status='running', started_at=UTC_TIMESTAMP(6) - INTERVAL 4 MINUTE "
             "WHERE id=%s", (live,))
    # 4: paused because its sender's token was revoked; 5: scheduled for tomorrow
    paused = post(client, app_key, body(120, sender_email="news@example.org",
                                        from_name="Acme News")).json["job_id"]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    scheduled = post(client, app_key, body(60, send_at=tomorrow.isoformat())).json["job_id"]
    for minutes, job_id in ((5, live), (3, paused), (1, scheduled)):
        sql(dao, "UPDATE jobs SET created_at = UTC_TIMESTAMP(6) - INTERVAL %s MINUTE "
                 "WHERE id = %s", (minutes, job_id))
    # the runner above stopped after its work; then one live and one crashed
    sql(dao, "UPDATE runners SET heartbeat_at = UTC_TIMESTAMP(6) - INTERVAL 31 MINUTE, "
             "started_at = UTC_TIMESTAMP(6) - INTERVAL 54 MINUTE")
    make_runners(dao)
    sql(dao, "UPDATE runners SET current_job_id=%s WHERE id LIKE 'r-mail-%%'", (live,))
    make_senders(dao)
    return {"main": main, "done": done, "live": live, "paused": paused, "scheduled": scheduled}


# --- a real browser --------------------------------------------------------------------------
def _chromium() -> str | None:
    """None when /usr/bin/chromium is there (installed now if need be), else why not."""
    if Path(CHROMIUM).exists():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Debian's chromium is not installed and this user cannot apt-get install it"
    try:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                       check=True, capture_output=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"installing chromium failed: {exc} {detail.decode(errors='replace')[-300:]}"
    return None if Path(CHROMIUM).exists() else "apt-get ran but /usr/bin/chromium is missing"


def test_the_dashboard_in_a_real_headless_chromium(client, dao, make_key, op_key, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install -r requirements-dev.txt (playwright)")
    why_not = _chromium()
    if why_not:
        pytest.skip(why_not)
    from werkzeug.serving import make_server

    ids = realistic_state(client, dao, make_key, tmp_path)
    shots = DOCS or tmp_path
    app = create_app(dao.settings.with_overrides(heartbeat_interval=30.0), dao)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                         headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(15_000)
            # logged out: the runners page sends us to the login form, which sends us back
            page.goto(f"{base}/dashboard/runners")
            assert "/dashboard/login" in page.url
            page.fill("#api_key", make_key(senders=["*"], name="not-an-operator"))
            page.click("button[type=submit]")
            assert "not an operator key" in page.inner_text(".notice")
            page.fill("#api_key", op_key)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/dashboard/runners")
            stale = page.locator("tr.stale")
            assert stale.count() == 1 and "r-mail-2-3107-c4d5e6" in stale.inner_text()
            red = stale.locator("td.age").evaluate("e => getComputedStyle(e).color")
            assert red == "rgb(220, 38, 38)"
            live = page.locator("tr", has_text="r-mail-1-4821-a1b2c3")
            assert live.locator(".dot.alive").count() == 1
            page.screenshot(path=str(shots / "dashboard-runners.png"), full_page=True)

            page.click("header nav >> text=Jobs")
            page.wait_for_url(f"{base}/dashboard/")
            row = page.locator("tr", has=page.locator(f'a[href="/dashboard/jobs/{ids["main"]}"]'))
            assert "completed with errors" in row.inner_text()
            counts = dao.recipient_counts(ids["main"])
            assert f"{counts['sent']} sent · {counts['failed']} failed · 240 total" \
                in row.inner_text()
            for status in ("running", "paused", "scheduled", "completed"):
                assert page.locator(f".badge.st-{status}").count() >= 1, status
            page.screenshot(path=str(shots / "dashboard-jobs.png"), full_page=True)

            page.click(f'a[href="/dashboard/jobs/{ids["main"]}"]')
            page.wait_for_url(f"{base}/dashboard/jobs/{ids['main']}")
            errors = page.locator("table", has_text="Error code").inner_text()
            assert "template_error" in errors and "gmail_400" in errors
            assert page.locator("svg.chart rect.sendbar").count() == 8  # minutes with sends
            assert page.locator(".tile.failed .n").inner_text() == str(counts["failed"])
            page.screenshot(path=str(shots / "dashboard-job.png"), full_page=True)

            # "user5 says they never got it": the address box in the header
            page.fill("#find-email", "User5@example.com")
            page.press("#find-email", "Enter")
            page.wait_for_url(re.compile(r".*/dashboard/recipients\?email=User5%40example\.com$"))
            traced = page.locator("table.trace tbody tr")
            assert traced.count() == 5                           # one row in each job
            assert "template_error" in traced.nth(4).inner_text()    # the oldest: job 1
            assert page.locator("table.trace .badge.st-sent").count() >= 1
            page.screenshot(path=str(shots / "dashboard-trace.png"), full_page=True)

            page.click("header nav >> text=Senders")
            page.wait_for_url(f"{base}/dashboard/senders")
            text = page.locator("main").inner_text()
            assert "412 / 500" in text and "auth revoked" in text and "ops@example.com" in text
            page.screenshot(path=str(shots / "dashboard-senders.png"), full_page=True)

            page.click("header button:has-text('Log out')")
            page.wait_for_url(re.compile(r".*/dashboard/login\?logged_out=1$"))
            page.goto(f"{base}/dashboard/senders")
            assert "/dashboard/login" in page.url
            browser.close()
    finally:
        server.shutdown()
    assert sorted(p.name for p in shots.glob("dashboard-*.png")) == [
        "dashboard-job.png", "dashboard-jobs.png", "dashboard-runners.png",
        "dashboard-senders.png", "dashboard-trace.png"]
