"""The language fallback chain (locales.py): which template variant a recipient's BCP 47 tag
gets. Pure functions, no database."""
from __future__ import annotations

import pytest

from mailjobs.locales import (
    InvalidLocale,
    VariantSelector,
    canonical,
    choose_variant,
    fallback_chain,
)

# tag -> the keys it tries, most specific first (the template's default comes after them)
CHAINS = [
    ("zh-TW", ("zh-TW", "zh-Hant-TW", "zh-Hant", "zh")),
    ("zh-HK", ("zh-HK", "zh-Hant-HK", "zh-Hant", "zh")),
    ("zh-CN", ("zh-CN", "zh-Hans-CN", "zh-Hans", "zh")),
    ("zh-SG", ("zh-SG", "zh-Hans-SG", "zh-Hans", "zh")),
    ("zh-Hant", ("zh-Hant", "zh-Hant-TW", "zh-TW", "zh")),
    ("zh", ("zh", "zh-Hans-CN", "zh-CN", "zh-Hans")),
    ("pt-BR", ("pt-BR", "pt-Latn-BR", "pt-Latn", "pt")),
    ("pt", ("pt", "pt-Latn-BR", "pt-BR", "pt-Latn")),
    ("en-GB", ("en-GB", "en-Latn-GB", "en-Latn", "en")),
    # Serbian in Latin script never falls to sr-RS (Cyrillic), only to the language alone
    ("sr-Latn", ("sr-Latn", "sr-Latn-RS", "sr")),
    ("sr-ME", ("sr-ME", "sr-Latn-ME", "sr-Latn", "sr")),       # Montenegro: Latin script
    ("sl-rozaj", ("sl-rozaj", "sl", "sl-Latn-SI", "sl-SI", "sl-Latn")),
    ("en-US-x-acme", ("en-US-x-acme", "en-US", "en-Latn-US", "en-Latn", "en")),
    ("zh-yue-HK", ("yue-HK", "yue-Hant-HK", "yue-Hant", "yue")),   # extlang: canonical yue
    ("xx-YY", ("xx-YY", "xx")),          # well formed, unknown to CLDR: no expansion
    ("und", ()),                         # undetermined: straight to the default
]


@pytest.mark.parametrize(("tag", "chain"), CHAINS, ids=[c[0] for c in CHAINS])
def test_the_fallback_chain_of_a_tag(tag, chain):
    assert fallback_chain(tag) == chain


# The keys of one template's variants; None below is its default.
KEYS = ["en", "zh-CN", "zh-Hant", "pt", "sr-Latn", "fr-CA"]
CHOICES = [
    ("zh-TW", "zh-Hant"),      # zh-TW -> zh-Hant-TW -> zh-Hant
    ("zh-HK", "zh-Hant"),
    ("zh-MO", "zh-Hant"),
    ("zh-CN", "zh-CN"),
    ("zh-SG", "zh-CN"),        # Simplified: no zh-Hans key, the Simplified variant zh-CN
    ("zh-Hans", "zh-CN"),
    ("zh", "zh-CN"),
    ("pt-BR", "pt"),
    ("pt-PT", "pt"),
    ("en-GB", "en"),
    ("en", "en"),
    ("sr-Latn", "sr-Latn"),
    ("sr-Latn-RS", "sr-Latn"),
    ("sr", None),              # Cyrillic: no variant in its script
    ("fr", "fr-CA"),           # the only French variant, same script
    ("de", None),              # no German: the default
    ("xx-YY", None),           # unknown language: the default
    ("und", None),
    (None, None),              # no locale at all
    # case-insensitive, `_` as `-`
    ("ZH-tw", "zh-Hant"),
    ("zh_TW", "zh-Hant"),
    ("zh_hant_hk", "zh-Hant"),
    ("PT_br", "pt"),
    ("EN-gb", "en"),
]


@pytest.mark.parametrize(("tag", "chosen"), CHOICES, ids=[str(c[0]) for c in CHOICES])
def test_the_variant_a_tag_gets(tag, chosen):
    assert choose_variant(tag, KEYS) == chosen
    assert VariantSelector(KEYS).choose(tag) == chosen


def test_the_most_specific_variant_wins():
    keys = ["zh", "zh-Hant", "zh-TW"]
    assert choose_variant("zh-TW", keys) == "zh-TW"
    assert choose_variant("zh-Hant-TW", keys) == "zh-TW"    # same tag, maximised
    assert choose_variant("zh-HK", keys) == "zh-Hant"
    assert choose_variant("zh-CN", keys) == "zh"
    assert choose_variant("zh-TW", ["zh", "zh-Hant-TW"]) == "zh-Hant-TW"


def test_keys_are_matched_in_any_casing_and_returned_as_given():
    assert choose_variant("zh-TW", ["ZH_hant"]) == "ZH_hant"


@pytest.mark.parametrize(("tag", "expected"), [
    ("zh_hant_tw", "zh-Hant-TW"), ("EN", "en"), ("pt-br", "pt-BR"), ("es-419", "es-419"),
    ("SR-latn-rs", "sr-Latn-RS"), ("de-CH-1996", "de-CH-1996"), ("en-US-X-Acme", "en-US-x-acme"),
])
def test_canonical_casing(tag, expected):
    assert canonical(tag) == expected


@pytest.mark.parametrize("tag", [
    "", "e", "english!", "zh-", "-zh", "zh--TW", "zh TW", "x-private", "zh-TW-TW", "12",
    "en-a", "de-1996-1996", "en-" + "a" * 40, "zh\nTW", "日本語", "i-klingon",
])
def test_what_is_not_a_language_tag(tag):
    with pytest.raises(InvalidLocale):
        canonical(tag)
    if tag:   # "" is no locale at all: the default
        with pytest.raises(InvalidLocale):
            choose_variant(tag, KEYS)
