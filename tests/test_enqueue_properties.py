"""The enqueue's fast paths give what the slow ones give (issue 17), on generated and
real-world-shaped input: the address check's ASCII fast path against email-validator whole,
and the recipients' INSERT text against pymysql's own escaping."""
from __future__ import annotations

import pymysql.converters
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailjobs.dao_mysql import insert_values
from mailjobs.deliverability.addresses import InvalidAddress, normalize_address

ATEXT = "abcxyzABCXYZ0189!#$%&'*+/=?^_`{|}~-"
ODD = " .\"(),:;<>@[]\\\tä€😀\x00"
labels = st.text(alphabet="abcz09-XYü", min_size=0, max_size=70)
domains = st.one_of(
    st.lists(labels, min_size=1, max_size=5).map(".".join),
    st.sampled_from(["example.com", "EXAMPLE.COM", "example.com.", "localhost", "example",
                     "[192.168.0.1]", "[IPv6:::1]", "xn--bcher-kva.example", "bücher.example",
                     "a" * 63 + ".example", "a" * 64 + ".example", "-bad.example",
                     "bad-.example", "ex..ample.com", ".example.com", "1.2.3.4",
                     "sub.example.co.uk", "münchen.de", "xn--mnchen-3ya.de"]))
locals_ = st.one_of(
    st.text(alphabet=ATEXT + ".", min_size=0, max_size=70),
    st.text(alphabet=ATEXT + ODD, min_size=0, max_size=20),
    st.sampled_from(["first.last", "first+tag", "o'brien", "user", "USER", "a..b", ".a", "a.",
                     '"quoted"', '"with space"', "josé", "x" * 64, "x" * 65, "üser"]))


def full(address: str) -> str | None:
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def fast(address: str) -> str | None:
    try:
        return normalize_address(address)
    except InvalidAddress:
        return None


@settings(max_examples=3000, deadline=None)
@given(locals_, domains)
@example("a" * 64, "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 57)  # 254
@example("a" * 64, "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 58)  # 255
@example("user", "example.com")
def test_the_ascii_fast_path_agrees_with_email_validator(local, domain):
    address = f"{local}@{domain}"
    assert fast(address) == full(address)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_judged_the_same_either_way(address):
    assert fast(address) == full(address)


values = st.one_of(st.none(), st.text(max_size=30),
                   st.text(alphabet="ab'\"\\\x00\n\r\x1a\x01\x02\x03", max_size=10))


def reference(job_id, rows, no_backslash):
    def literal(v):
        if v is None:
            return "NULL"
        return "'" + (v.replace("'", "''") if no_backslash
                      else pymysql.converters.escape_string(v)) + "'"
    return ",".join(f"({job_id}," + ",".join(literal(v) for v in row) + ")" for row in rows)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), values, values, values, values,
                          values), min_size=1, max_size=30),
       st.booleans(), st.sampled_from([10**9, 200, 1]))
def test_insert_values_are_escaped_as_pymysql_escapes_them(rows, no_backslash, max_bytes):
    parts = list(insert_values(42, rows, no_backslash, max_bytes))
    assert ",".join(parts) == reference(42, rows, no_backslash)
    if max_bytes == 10**9:
        assert len(parts) == 1
    elif max_bytes == 1:   # every statement over the bound: one row each, never split
        assert len(parts) == len(rows)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8)
recipient = st.fixed_dictionaries(
    {"email": st.one_of(st.builds("{}@{}".format, locals_, domains), st.integers(),
                        st.text(max_size=330))},
    optional={"name": st.one_of(st.none(), st.text(max_size=260),
                                st.sampled_from(["B\r\nX-Evil: 1", "x" * 256, "Ünïcode"]),
                                st.integers()),
              "variables": st.one_of(st.none(), st.dictionaries(st.text(max_size=6), json_values,
                                                                max_size=4),
                                     st.lists(st.integers(), max_size=2)),
              "locale": st.one_of(st.none(), st.sampled_from(["en", "pt_br", "zh-TW", "x", "",
                                                              "en-" + "a" * 40, "de-DE"]),
                                  st.text(max_size=6), st.integers()),
              "metadata": st.one_of(st.none(), st.dictionaries(st.text(max_size=5), json_values,
                                                              max_size=3),
                                    st.just({"big": "x" * 5000}), st.just([1])),
              "colour": st.just("red")})


@settings(max_examples=1500, deadline=None)
@given(st.lists(recipient, min_size=1, max_size=5), st.booleans(),
       st.sampled_from(["", " ", "1e400", "NaN"]))
def test_the_fast_recipient_validation_agrees_with_pydantic(recipients, later, number):
    """validate_recipients either gives what RecipientIn gives, or hands the chunk to it."""
    import json

    from pydantic import ValidationError

    from mailjobs.web.schemas import RECIPIENT_LIST, validate_recipients

    text = json.dumps(recipients)
    if number.strip() and recipients and isinstance(recipients[0].get("variables"), dict):
        text = text.replace('"variables": {', f'"variables": {{"big": {number}, ', 1)
    context = {"finite_checked_later": True} if later else {}

    def outcome(validate):
        try:
            return [r.model_dump() for r in validate()]
        except ValidationError as exc:
            return [(e["loc"], e["type"]) for e in exc.errors()]

    fast = outcome(lambda: validate_recipients(text.encode(), context))
    slow = outcome(lambda: RECIPIENT_LIST.validate_json(text.encode(), context=context))
    # NaN/inf compare unequal to themselves: compare their JSON
    assert json.dumps(fast, default=str) == json.dumps(slow, default=str)
