"""Template budgets (issue 13): what the compile-time checks and the render budget cost.

1. Hostile templates at compile (what POST runs): time and peak RSS growth of this process.
2. A legit newsletter template rendered per recipient: the budgeted environment of
   src/templating.py against a plain Jinja2 SandboxedEnvironment (the configuration before
   issue 13), microseconds per render.
3. Language variants (issue 16): the same newsletter in 5 languages against the default alone:
   at POST, checking and compiling (check_templates) and choosing each recipient's variant
   (choose_languages); in the runner, a recipient's whole message (EmailScheduler.render:
   variant lookup, render, From name, build_message), recipients/s.

    .venv/bin/python bench/templates.py [--renders 20000] [--only variants]

No database needed. Peak RSS is VmHWM, reset (Linux /proc/self/clear_refs) before each case.
"""
from __future__ import annotations

import argparse
import re
import statistics
import time
from datetime import UTC, datetime

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from mailjobs.email_scheduler import EmailScheduler
from mailjobs.enqueue import check_templates, choose_languages
from mailjobs.records import Job, Recipient
from mailjobs.settings import Settings
from mailjobs.templating import (
    RenderLimits,
    TemplateCompileError,
    compile_templates,
    recipient_context,
)
from mailjobs.web.schemas import SendTemplateEmailsIn

HOSTILE = {
    '"x" * 10**8': '{{ "x" * 10**8 }}',
    "9**(9**7)": "{{ 9**(9**7) }}",
    '100,000 x "{{ a }}"': "{{ a }}" * 100_000,
    "200 nested ifs": "{% if a %}" * 200 + "x" + "{% endif %}" * 200,
    "300 parentheses": "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
    "|upper x 200": "{{ a" + "|upper" * 200 + " }}",
    "2,400 x {{ a }} (at the node limit)": "x {{ a }}" * 2400,
}

NEWSLETTER_HTML = """<html><body><h1>Hello {{ name|title }}</h1>
<p>Your plan: {{ plan|upper }} since {{ since }}.</p>
<ul>{% for item in items %}<li>{{ loop.index }}. {{ item.title }} - {{ "%.2f"|format(item.price) }} EUR</li>{% endfor %}</ul>
{% if vip %}<p>Thank you for being a VIP, {{ name }}!</p>{% endif %}
<p>{{ company }} &middot; <a href="{{ unsubscribe_url }}">unsubscribe</a></p></body></html>"""
NEWSLETTER_TEXT = "Hello {{ name }}, {{ items|length }} items for you from {{ company }}."


def _mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) / 1024


def hostile() -> None:
    print("| template | result | time ms | peak RSS growth MB |\n|---|---|---:|---:|")
    for label, source in HOSTILE.items():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _mb("VmRSS")
        started = time.perf_counter()
        try:
            compile_templates("s", None, source)
            result = "compiles"
        except TemplateCompileError as exc:
            result = f"refused: {str(exc)[:60]}"
        elapsed = (time.perf_counter() - started) * 1000
        print(f"| `{label}` | {result} | {elapsed:.1f} | {_mb('VmHWM') - before:.1f} |")


def legit(renders: int) -> None:
    context = recipient_context(
        {"company": "Acme", "since": "2024", "vip": True, "unsubscribe_url": "https://x/u/1",
         "items": [{"title": f"Item {i}", "price": i * 1.5} for i in range(10)]},
        "ann@example.com", "ann smith", {"plan": "pro"})
    plain = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    html_old = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
    old = (plain.from_string("Hi {{ name }}"), html_old.from_string(NEWSLETTER_HTML),
           plain.from_string(NEWSLETTER_TEXT))
    new = compile_templates("Hi {{ name }}", NEWSLETTER_HTML, NEWSLETTER_TEXT)
    limits = RenderLimits()
    assert tuple(t.render(context) for t in old) == new.render(context, limits)

    def per_render(fn) -> float:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(renders // 5):
                fn()
            runs.append((time.perf_counter() - started) / (renders // 5) * 1e6)
        return statistics.median(runs)

    before = per_render(lambda: [t.render(context) for t in old])
    after = per_render(lambda: new.render(context, limits))
    print(f"\nnewsletter render (subject + html with a 10-item loop + text), {renders} renders, "
          f"median of 5 runs:\n  plain SandboxedEnvironment: {before:.1f} µs\n"
          f"  budgeted (src/templating.py): {after:.1f} µs ({after / before:.2f}x)")


LANGUAGES = ("zh-Hant", "zh-Hans", "pt", "fr", "de")
# each recipient's locale, in turn: 4 of 6 get a variant (zh-TW, zh-CN, pt-BR, fr-CA), 2 the default
LOCALES = ("zh-TW", "zh-CN", "pt-BR", "fr-CA", "en-GB", None)


def _variants() -> dict[str, dict[str, str]]:
    """The newsletter in five languages: the same structure, words marked as the language's."""
    return {tag: {"subject": f"[{tag}] Hi {{{{ name }}}}",
                  "html": NEWSLETTER_HTML.replace("Hello", f"[{tag}]"),
                  "text": NEWSLETTER_TEXT.replace("Hello", f"[{tag}]"),
                  "from_name": f"Ops {tag}"} for tag in LANGUAGES}


def _request(n: int, variants: bool) -> SendTemplateEmailsIn:
    template: dict = {"subject": "Hi {{ name }}", "html": NEWSLETTER_HTML, "text": NEWSLETTER_TEXT}
    if variants:
        template["variants"] = _variants()
    people = [{"email": f"user{i}@example.com", "name": f"User {i}", "variables": {"plan": "pro"},
               **({"locale": LOCALES[i % 6]} if LOCALES[i % 6] else {})} for i in range(n)]
    return SendTemplateEmailsIn.model_validate({
        "sender_email": "ops@example.com", "from_name": "Ops", "template": template,
        "variables": {"company": "Acme", "since": "2024", "vip": True,
                      "unsubscribe_url": "https://x/u/1",
                      "items": [{"title": f"Item {i}", "price": i * 1.5} for i in range(10)]},
        "recipients": people})


def _job(req: SendTemplateEmailsIn) -> Job:
    now = datetime.now(UTC)
    t = req.template
    assert t is not None
    return Job(1, "template", 1, req.sender_email, req.from_name, None, t.subject, t.html, t.text,
               req.variables, "running", None, 0, 0, None, None, now, now, None, now,
               template_variants={k: v.model_dump(exclude_none=True)
                                  for k, v in (t.variants or {}).items()} or None)


def variants(renders: int, rounds: int = 7) -> None:
    """Both cases are set up first, then timed in alternation (round by round), so the load of
    a shared machine falls on both alike; medians of the rounds."""
    settings = Settings()
    print("\nlanguage variants (issue 16): the newsletter alone, and with 5 variants "
          f"({', '.join(LANGUAGES)}); recipients' locales cycle through {LOCALES}")
    n = 20_000
    cases = {}
    for with_variants in (False, True):
        req = _request(n, with_variants)
        assert req.template is not None
        default, by_tag = check_templates(req.template, settings)
        languages = choose_languages(req, default, by_tag)
        job = _job(req)
        recipients = [Recipient(i, 1, r.email, r.name, r.variables, "sending", 1, None, None, None,
                                f"<{i}@x>", None, None, None, None,
                                locale=languages.chosen[i][0], locale_used=languages.chosen[i][1])
                      for i, r in enumerate(req.recipients[:600])]
        scheduler = EmailScheduler(settings)
        for r in recipients[:6]:     # compiled once per job (and variant): not in the timing
            scheduler.render(job, r)
        first = scheduler.render(job, recipients[0]).raw    # zh-TW: the zh-Hant variant
        assert (b"From: Ops zh-Hant" in first) == with_variants, first[:300]
        cases[with_variants] = (req, default, by_tag, job, recipients, scheduler)

    def check(case: tuple) -> float:
        started = time.perf_counter()
        check_templates(case[0].template, settings)
        return (time.perf_counter() - started) * 1000

    def choose(case: tuple) -> float:
        started = time.perf_counter()
        choose_languages(case[0], case[1], case[2])
        return (time.perf_counter() - started) / n * 1e6

    def render(case: tuple) -> float:
        _, _, _, job, recipients, scheduler = case
        count = renders // rounds
        started = time.perf_counter()
        for i in range(count):
            scheduler.render(job, recipients[i % len(recipients)])
        return count / (time.perf_counter() - started)

    results: dict[tuple[int, bool], list[float]] = {}
    for _ in range(rounds):
        for i, measure in enumerate((check, choose, render)):
            for with_variants in (False, True):
                results.setdefault((i, with_variants), []).append(measure(cases[with_variants]))
    print(f"| median of {rounds} alternating rounds | without variants | with 5 variants | ratio |\n"
          "|---|---:|---:|---:|")
    labels = ("POST: check and compile the template (ms)",
              f"POST: choose each recipient's variant (µs a recipient, {n:,} recipients)",
              f"runner: whole messages rendered and built (recipients/s, {renders:,} in all)")
    for i, label in enumerate(labels):
        a = statistics.median(results[(i, False)])
        b = statistics.median(results[(i, True)])
        print(f"| {label} | {a:,.1f} | {b:,.1f} | {b / a:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=20_000)
    parser.add_argument("--only", choices=("hostile", "legit", "variants"))
    args = parser.parse_args()
    if args.only in (None, "hostile"):
        hostile()
    if args.only in (None, "legit"):
        legit(args.renders)
    if args.only in (None, "variants"):
        variants(args.renders)


if __name__ == "__main__":
    main()
