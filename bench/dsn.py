"""Bounce parser cost against hostile mail (issue 13): each shape at 100 KB and at 1 MB, the best
of `--repeats` runs of `dsn.parse`, and the ratio 1 MB / 100 KB (linear growth: about 10 or
less; the old quadratic parser gave ~100, and hours at 1 MB).

    .venv/bin/python bench/dsn.py [--repeats 5] [--strict]

--strict exits 1 when a 1 MB shape takes 100 ms or more, or a ratio exceeds 15.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mailjobs.deliverability import dsn

ROOT = Path(__file__).resolve().parents[1]

HEAD = (b"From: postmaster@example.net\nSubject: Undeliverable\nContent-Type: text/plain\n\n"
        b"could not be delivered 550\n")
SAMPLE = (ROOT / "tests" / "dsn_samples" / "mta_hard_5xx.eml").read_bytes() \
    .replace(b"@@MESSAGE_ID@@", b"<mj.1.2.ab@example.com>") \
    .replace(b"@@RECIPIENT@@", b"gone@example.net").replace(b"@@SENDER@@", b"ops@example.com")


def shapes(n: int) -> dict[str, bytes]:
    return {
        "genuine DSN + quoted copy": SAMPLE + b"A line of the returned message, quoted.\n" * (n // 40),
        "one line of '-'": HEAD + b"-" * n + b"\n",
        "'--' quote-like lines": HEAD + (b"--" + b"x" * 100 + b"\n") * (n // 103),
        "local-part characters": HEAD + b"a" * n + b"\n",
        "'<' then 'a@' repeated": HEAD + b"<" + b"a@" * (n // 2),
        "'<a' repeated": HEAD + b"<a" * (n // 2),
        "';' in a boundary": b'Content-Type: multipart/mixed; boundary="' + b";" * n + b"\n\nx\n",
        "';\"' in a charset": b'Content-Type: text/plain; charset="' + b';"' * (n // 2) + b"\n\nx\n",
        "short lines": HEAD + b"x\n" * (n // 2),
        "bare CRs": HEAD + b"\r" * n,
        "50 nested multiparts + lines": (b"Content-Type: multipart/mixed; boundary=b\n\n--b\n" * 50
                                         + b"Content-Type: text/plain\n\n" + b"x\n" * (n // 2)),
        "charset=idna": (b"From: postmaster@x\nSubject: Undeliverable\nContent-Type: text/plain;"
                         b" charset=idna\n\n" + b"\xff" * n),
        "charset=punycode": (b"From: postmaster@x\nSubject: Undeliverable\nContent-Type: "
                             b"text/plain; charset=punycode\n\n" + b"a-" * (n // 2)),
        "DSN with 1 MB fields": (
            b"From: mailer-daemon@x\nContent-Type: multipart/report; report-type=delivery-status;"
            b" boundary=B\n\n--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x"
            b"\n\nFinal-Recipient: rfc822; " + b"a" * (n // 2) + b"\nAction: failed\nStatus: "
            b"5.1.1\nDiagnostic-Code: smtp; " + b"5" * (n // 2) + b"\n--B--\n"),
    }


def best(raw: bytes, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dsn.parse(raw, max_bytes=0)      # no byte cap: the parser's own growth
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    small, large = shapes(100_000), shapes(1_000_000)
    print("| shape | 100 KB ms | 1 MB ms | ratio |\n|---|---:|---:|---:|")
    ok = True
    for name in small:
        a, b = best(small[name], args.repeats), best(large[name], args.repeats)
        ratio = b / a if a > 0 else float("inf")
        ok = ok and b < 0.100 and ratio <= 15
        print(f"| {name} | {a * 1000:.1f} | {b * 1000:.1f} | {ratio:.1f} |", flush=True)
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
