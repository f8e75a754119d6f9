"""Template budgets (issue 13): what the compile-time checks and the render budget cost.

1. Hostile templates at compile (what POST runs): time and peak RSS growth of this process.
2. A legit newsletter template rendered per recipient: the budgeted environment of
   src/templating.py against a plain Jinja2 SandboxedEnvironment (the configuration before
   issue 13), microseconds per render.

    .venv/bin/python bench/templates.py [--renders 20000]

No database needed. Peak RSS is VmHWM, reset (Linux /proc/self/clear_refs) before each case.
"""
from __future__ import annotations

import argparse
import re
import statistics
import time

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from mailjobs.templating import (
    RenderLimits,
    TemplateCompileError,
    compile_templates,
    recipient_context,
)

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=20_000)
    args = parser.parse_args()
    hostile()
    legit(args.renders)


if __name__ == "__main__":
    main()
