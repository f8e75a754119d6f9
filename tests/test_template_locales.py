"""Each recipient's language (issue 16): template variants by BCP 47 tag, chosen at POST by the
fallback chain, recorded on the recipient row and sent as such (subject, bodies, From name),
through the real API, the real MariaDB, a real runner and the outbox transport."""
from __future__ import annotations

import csv
import email
import email.policy
import io

from runner_helpers import count_rows, fast, recipients, running, wait_job_done
from test_api_enqueue import assert_nothing_written, body, post


def h(key):
    return {"X-API-Key": key}


VARIANTS = {
    "zh-Hant": {"subject": "{{ name }}，您好", "html": "<p>繁體 {{ code }}</p>",
                "text": "繁體 {{ code }}", "from_name": "營運團隊"},
    "zh_cn": {"subject": "{{ name }}，你好", "html": "<p>简体 {{ code }}</p>",
              "text": "简体 {{ code }}", "from_name": "运营团队"},
    "pt": {"subject": "Olá {{ name }}", "text": "Português {{ code }}"},
}
TEMPLATE = {"subject": "Hello {{ name }}", "html": "<p>English {{ code }}</p>",
            "text": "English {{ code }}", "variants": VARIANTS}
# recipient's locale -> (variant it gets, subject, text, From display name)
EXPECTED = {
    "zh-TW": ("zh-Hant", "Ann，您好", "繁體 c0", "營運團隊"),
    "zh-CN": ("zh-CN", "Bo，你好", "简体 c1", "运营团队"),
    "pt-BR": ("pt", "Olá Cy", "Português c2", "Ops"),      # no from_name: the job's
    None: (None, "Hello Di", "English c3", "Ops"),
}


def locale_body(template=TEMPLATE, **changes):
    people = [("Ann", "zh-TW"), ("Bo", "zh-CN"), ("Cy", "pt-BR"), ("Di", None)]
    recipients = []
    for i, (name, locale) in enumerate(people):
        r = {"email": f"user{i}@example.com", "name": name, "variables": {"code": f"c{i}"}}
        if locale:
            r["locale"] = locale
        recipients.append(r)
    return body(template=template, recipients=recipients, **changes)


def parsed(path):
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def sent_messages(outbox, job_id):
    """{to address: message} of a job's .eml files."""
    out = {}
    for path in (outbox / str(job_id)).glob("*.eml"):
        msg = parsed(path)
        out[msg["To"].addresses[0].addr_spec] = msg
    return out


def bodies(msg):
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    return (text.get_content().strip() if text else None,
            html.get_content().strip() if html else None)


def test_each_recipient_gets_its_language_subject_body_and_from_name(client, key, dao,
                                                                      tmp_path):
    r = post(client, key, locale_body())
    assert r.status_code == 202, r.json
    job_id = r.json["job_id"]
    outbox = tmp_path / "out"
    with running(fast(dao.settings, mail_transport="outbox", outbox_dir=str(outbox)), dao):
        assert wait_job_done(dao, job_id) == "completed"
    messages = sent_messages(outbox, job_id)
    assert len(messages) == 4
    for i, (locale, (_, subject, text, from_name)) in enumerate(EXPECTED.items()):
        msg = messages[f"user{i}@example.com"]
        assert msg["Subject"] == subject, locale
        assert msg["From"].addresses[0].display_name == from_name, locale
        assert msg["From"].addresses[0].addr_spec == "ops@example.com"
        got_text, got_html = bodies(msg)
        assert got_text == text, locale
        if locale == "pt-BR":
            assert got_html is None      # the pt variant has text only: nothing of the default's
        else:
            assert got_html == f"<p>{text}</p>"
    # the rows record what was asked for and the variant used: API, CSV export
    listed = client.get(f"/api/jobs/{job_id}/recipients", headers=h(key)).json["recipients"]
    assert [(x["locale"], x["locale_used"]) for x in listed] == \
        [(loc, used[0]) for loc, used in EXPECTED.items()]
    export = client.get(f"/api/jobs/{job_id}/recipients.csv", headers=h(key))
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [(x["locale"], x["locale_used"]) for x in rows] == \
        [(loc or "", used[0] or "") for loc, used in EXPECTED.items()]


def test_the_job_locale_is_the_default_of_recipients_without_one(client, key, dao):
    r = post(client, key, locale_body(locale="zh-HK"))
    assert r.status_code == 202, r.json
    rows = recipients(dao, r.json["job_id"])
    assert [(x.locale, x.locale_used) for x in rows] == [
        ("zh-TW", "zh-Hant"), ("zh-CN", "zh-CN"), ("pt-BR", "pt"), ("zh-HK", "zh-Hant")]


def test_locales_are_matched_in_any_casing_and_recorded_canonically(client, key, dao):
    b = locale_body()
    b["recipients"][0]["locale"] = "ZH_hant_hk"
    b["recipients"][3]["locale"] = "de-CH"             # no German: the default
    rows = recipients(dao, post(client, key, b).json["job_id"])
    assert [(x.locale, x.locale_used) for x in rows][::3] == [("zh-Hant-HK", "zh-Hant"),
                                                              ("de-CH", None)]


def test_an_invalid_locale_is_refused_naming_the_recipient(client, key, dao):
    b = locale_body()
    b["recipients"][2]["locale"] = "pt BR!"
    r = post(client, key, b)
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (400, "validation_error", "recipients[2].locale")
    assert "BCP 47" in r.json["message"]
    r = post(client, key, locale_body(locale="en--US"))
    assert (r.status_code, r.json["field"]) == (400, "locale")
    bad_key = dict(TEMPLATE, variants={**VARIANTS, "chinese!": VARIANTS["pt"]})
    r = post(client, key, locale_body(template=bad_key))
    assert (r.status_code, r.json["field"]) == (400, "template.variants")
    assert "chinese!" in r.json["message"]
    twice = dict(TEMPLATE, variants={**VARIANTS, "ZH-hant": VARIANTS["pt"]})
    r = post(client, key, locale_body(template=twice))
    assert (r.status_code, r.json["field"]) == (400, "template.variants")
    assert "two variants for zh-Hant" in r.json["message"]
    assert_nothing_written(dao)


def test_a_variable_missing_in_the_variant_a_recipient_gets_is_refused(client, key, dao):
    variants = {**VARIANTS, "pt": {"subject": "Olá {{ name }}",
                                   "text": "Código {{ code }} até {{ deadline }}"}}
    r = post(client, key, locale_body(template=dict(TEMPLATE, variants=variants)))
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (400, "missing_variables", "recipients[2].variables")
    assert r.json["message"] == ("recipients[2].variables: template variable(s) not provided "
                                 "by template variant pt: deadline")
    assert_nothing_written(dao)
    # nobody gets the pt variant: the variable is not needed
    b = locale_body(template=dict(TEMPLATE, variants=variants))
    b["recipients"][2]["locale"] = "en"
    assert post(client, key, b).status_code == 202
    # the recipient's own variable is enough
    b["recipients"][2].update(locale="pt-BR", variables={"code": "c2", "deadline": "amanhã"})
    assert post(client, key, b).status_code == 202


def test_a_variable_missing_in_the_default_names_it(client, key, dao):
    template = dict(TEMPLATE, text="English {{ code }} {{ extra }}")
    r = post(client, key, locale_body(template=template))
    assert (r.status_code, r.json["field"]) == (400, "recipients[3].variables")
    assert r.json["message"] == ("recipients[3].variables: template variable(s) not provided "
                                 "by the template's default: extra")
    assert_nothing_written(dao)


def test_a_variant_that_does_not_compile_is_refused_naming_it(client, key, dao):
    variants = {**VARIANTS, "pt": {"subject": "Olá", "html": "{% if %}"}}
    r = post(client, key, locale_body(template=dict(TEMPLATE, variants=variants)))
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (400, "template_error", "template.variants.pt.html")
    half = {**VARIANTS, "pt": {"subject": "Olá"}}    # a variant stands alone: needs a body
    r = post(client, key, locale_body(template=dict(TEMPLATE, variants=half)))
    assert (r.status_code, r.json["field"]) == (400, "template.variants.pt")
    big = {**VARIANTS, "pt": {"subject": "Olá", "text": "x" * (dao.settings.template_max_bytes + 1)}}
    r = post(client, key, locale_body(template=dict(TEMPLATE, variants=big)))
    assert (r.status_code, r.json["field"]) == (413, "template.variants.pt.text")
    many = {f"en-{i:03d}": {"subject": "s", "text": "t"} for i in range(51)}
    r = post(client, key, locale_body(template=dict(TEMPLATE, variants=many)))
    assert (r.status_code, r.json["field"]) == (400, "template.variants")
    assert_nothing_written(dao)


def test_stored_templates_keep_their_variants_per_version(client, key, dao, tmp_path):
    stored = {"name": "ticket", **TEMPLATE}
    r = client.post("/api/templates", json=stored, headers=h(key))
    assert r.status_code == 201, r.json
    assert sorted(r.json["variants"]) == ["pt", "zh-CN", "zh-Hant"]     # canonical keys
    assert r.json["variants"]["zh-Hant"]["from_name"] == "營運團隊"
    b = locale_body(template_name="ticket")
    del b["template"]
    first = post(client, key, b).json["job_id"]
    # version 2 drops Chinese: later jobs send the default to zh readers
    v2 = dict(TEMPLATE, variants={"pt": VARIANTS["pt"]})
    assert client.put("/api/templates/ticket", json=v2, headers=h(key)).json["version"] == 2
    second = post(client, key, b).json["job_id"]
    versions = client.get("/api/templates/ticket", headers=h(key)).json["versions"]
    assert [sorted(v["variants"]) for v in versions] == [["pt"], ["pt", "zh-CN", "zh-Hant"]]
    r = client.put("/api/templates/ticket", headers=h(key), json=dict(
        TEMPLATE, variants={"pt": {"subject": "Olá", "html": "{{ a b }}"}}))
    assert (r.status_code, r.json["field"]) == (400, "variants.pt.html")
    outbox = tmp_path / "out"
    with running(fast(dao.settings, mail_transport="outbox", outbox_dir=str(outbox)), dao):
        assert wait_job_done(dao, first) == "completed"
        assert wait_job_done(dao, second) == "completed"
    assert sent_messages(outbox, first)["user0@example.com"]["Subject"] == "Ann，您好"
    assert sent_messages(outbox, second)["user0@example.com"]["Subject"] == "Hello Ann"
    assert sent_messages(outbox, second)["user2@example.com"]["Subject"] == "Olá Cy"


def test_the_dashboard_shows_a_recipients_language(client, key, make_key, dao):
    job_id = post(client, key, locale_body()).json["job_id"]
    op = make_key(senders=[], operator=True, name="ops")
    client.post("/dashboard/login", data={"api_key": op})
    page = client.get("/dashboard/recipients", query_string={"email": "user0@example.com"})
    assert page.status_code == 200
    cell = page.text.split('<td class="locale">')[1].split("</td>")[0]
    assert "zh-TW" in cell and "variant <span class=\"mono\">zh-Hant</span>" in cell
    other = client.get("/dashboard/recipients", query_string={"email": "user3@example.com"})
    assert "default template" in other.text.split('<td class="locale">')[1].split("</td>")[0]
    job_page = client.get(f"/dashboard/jobs/{job_id}")
    languages = job_page.text.split('<dd class="locale">')[1].split("</dd>")[0]
    assert [tag in languages for tag in ("pt", "zh-CN", "zh-Hant", "營運團隊")] == [True] * 4
    assert count_rows(dao, "jobs") == 1


def test_the_variants_together_stay_within_template_max_total_nodes(dao, key):
    from mailjobs.api_server import create_app

    client = create_app(dao.settings.with_overrides(template_max_total_nodes=200), dao
                        ).test_client()
    part = "x {{ code }}" * 20      # ~40 elements a part
    variants = {tag: {"subject": "s", "text": part, "html": part}
                for tag in ("de", "fr", "it", "es")}
    r = post(client, key, locale_body(template=dict(TEMPLATE, variants=variants)))
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (400, "template_error", "template.variants.it")    # default + de + fr + it > 200
    assert "TEMPLATE_MAX_TOTAL_NODES (200)" in r.json["message"]
    r = client.post("/api/templates", headers=h(key),
                    json={"name": "many", **TEMPLATE, "variants": variants})
    assert (r.status_code, r.json["field"]) == (400, "variants.it")
    del variants["it"], variants["es"]
    assert post(client, key, locale_body(template=dict(TEMPLATE, variants=variants))
                ).status_code == 202
    assert count_rows(dao, "jobs") == 1


def test_the_command_line_lists_each_recipients_language(client, key, run):
    job_id = post(client, key, locale_body()).json["job_id"]
    lines = run("recipients", str(job_id)).output.splitlines()
    assert "LANGUAGE" in lines[0]
    assert [("zh-TW>zh-Hant" in lines[1]), ("zh-CN>zh-CN" in lines[2]), ("pt-BR>pt" in lines[3]),
            (">" not in lines[4])] == [True] * 4


def test_a_retried_recipient_is_sent_the_variant_it_was_given(client, key, dao, tmp_path):
    job_id = post(client, key, locale_body()).json["job_id"]
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=h(key)).status_code == 200
    r = client.post(f"/api/jobs/{job_id}/retry", json={"status": ["cancelled"]}, headers=h(key))
    assert (r.status_code, r.json["requeued"]) == (200, 4)
    outbox = tmp_path / "out"
    with running(fast(dao.settings, mail_transport="outbox", outbox_dir=str(outbox)), dao):
        assert wait_job_done(dao, job_id) == "completed"
    messages = sent_messages(outbox, job_id)
    assert [messages[f"user{i}@example.com"]["Subject"] for i in range(4)] == \
        [subject for _, subject, _, _ in EXPECTED.values()]
    assert [(x.locale, x.locale_used) for x in recipients(dao, job_id)] == \
        [(loc, used[0]) for loc, used in EXPECTED.items()]
