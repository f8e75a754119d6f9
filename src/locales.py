"""Each recipient's language: BCP 47 tags, their fallback chain, and the template variant a tag
gets (issue 16).

A template may carry variants keyed by language tag (`"zh-Hant"`, `"pt"`, `"en-GB"`). A
recipient's tag is matched against those keys through its fallback chain:

1. the tag as given (canonical casing: `zh-hant-tw` and `zh_Hant_TW` are `zh-Hant-TW`);
2. the tag without its variants and extensions (`sl-rozaj` -> `sl`);
3. its likely-subtags expansion from CLDR (Babel's data): `zh-TW` -> `zh-Hant-TW`,
   `zh-SG` -> `zh-Hans-SG`, `pt-BR` -> `pt-Latn-BR`, `sr-ME` -> `sr-Latn-ME`;
4. language-region, when that pair expands to the same script (`zh-Hant` -> `zh-TW`, but
   `sr-Latn-RS` never `sr-RS`, which is Cyrillic);
5. language-script (`zh-Hant`);
6. the language alone (`zh`);

then, among the template's variants, one of the same language in the same script (`pt-BR`
with only a `pt-PT` variant gets `pt-PT`, not the default), and last the template's default.
So `zh-TW` tries zh-TW, zh-Hant-TW, zh-Hant, zh; `zh-HK` tries zh-HK, zh-Hant-HK, zh-Hant,
zh; `en-GB` tries en-GB, en-Latn-GB, en-Latn, en.

`fallback_chain` is a pure function of the tag; `choose_variant` of the tag and the keys;
`VariantSelector` remembers its answers for one job's keys (a job's recipients share a few
tags, so choosing costs a dict lookup per recipient).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from babel.core import get_global

# RFC 5646 allows longer tags, but none a mail template needs; a column holds 35 characters.
MAX_TAG_CHARS = 35
# Most variants one template may carry (every one is compiled at POST and in the runner).
MAX_VARIANTS = 50

# RFC 5646's langtag (grandfathered and bare private-use tags are refused): language with up to
# three extlangs, script, region, variants, extensions, private use. Case-insensitive; `_` is
# read as `-` before matching.
_LANGTAG = re.compile(
    r"""(?P<language>[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{5,8})
        (?:-(?P<script>[a-z]{4}))?
        (?:-(?P<region>[a-z]{2}|[0-9]{3}))?
        (?P<variants>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*)
        (?P<extensions>(?:-[0-9a-wyz](?:-[a-z0-9]{2,8})+)*)
        (?P<private>-x(?:-[a-z0-9]{1,8})+)?""",
    re.VERBOSE | re.IGNORECASE | re.ASCII)
# Tags that name no language: they get the default, never a likely-subtags guess (und -> en).
_NO_LANGUAGE = frozenset({"und", "mul", "zxx", "mis"})


class InvalidLocale(ValueError):
    """Not a BCP 47 language tag."""


@dataclass(frozen=True)
class Tag:
    language: str
    script: str | None
    region: str | None
    rest: str          # variants, extensions and private use, canonical casing, with dashes

    @property
    def base(self) -> str:
        return _join(self.language, self.script, self.region)

    def __str__(self) -> str:
        return self.base + self.rest


def _join(*parts: str | None) -> str:
    return "-".join(p for p in parts if p)


@functools.lru_cache(maxsize=4096)
def parse_tag(tag: str) -> Tag:
    """A BCP 47 tag in canonical casing (language lower, Script title, REGION upper, the rest
    lower); `_` separates like `-`. Raises InvalidLocale."""
    if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS:
        raise InvalidLocale(f"a BCP 47 language tag of 1 to {MAX_TAG_CHARS} characters, such "
                            "as en, pt-BR or zh-Hant")
    m = _LANGTAG.fullmatch(tag.replace("_", "-"))
    if m is None:
        raise InvalidLocale(f"{tag!r} is not a BCP 47 language tag (such as en, pt-BR, zh-TW "
                            "or zh-Hant)")
    language = m["language"].lower()
    if "-" in language:   # an extlang: zh-yue is yue in canonical form (RFC 5646 4.5)
        language = language.split("-")[1]
    rest = (m["variants"] or "") + (m["extensions"] or "") + (m["private"] or "")
    variants = (m["variants"] or "").lower().split("-")[1:]
    if len(set(variants)) != len(variants):
        raise InvalidLocale(f"{tag!r} repeats a variant subtag")
    return Tag(language, m["script"].title() if m["script"] else None,
               m["region"].upper() if m["region"] else None, rest.lower())


def canonical(tag: str) -> str:
    """`tag` in canonical casing (`ZH_hant_tw` -> `zh-Hant-TW`); raises InvalidLocale."""
    return str(parse_tag(tag))


def _likely() -> dict[str, str]:
    return get_global("likely_subtags")  # type: ignore[return-value]


def maximize(language: str, script: str | None, region: str | None
             ) -> tuple[str, str | None, str | None]:
    """CLDR's "add likely subtags" for a known language: the script and region it is most
    likely written in and spoken, the given ones kept (zh, -, TW -> zh, Hant, TW). An unknown
    language comes back as it is."""
    if language in _NO_LANGUAGE:
        return language, script, region
    table = _likely()
    for key in (_join(language, script, region), _join(language, region),
                _join(language, script), language):
        found = table.get(key.replace("-", "_"))
        if found:
            lang, *parts = found.split("_")
            likely_script = next((p for p in parts if len(p) == 4), None)
            likely_region = next((p for p in parts if len(p) != 4), None)
            return language, script or likely_script, region or likely_region
    return language, script, region


@functools.lru_cache(maxsize=4096)
def fallback_chain(tag: str) -> tuple[str, ...]:
    """The variant keys `tag` tries, most specific first (the template's default comes after
    them all); raises InvalidLocale. See the module's docstring."""
    t = parse_tag(tag)
    if t.language in _NO_LANGUAGE:
        return ()
    chain = [str(t), t.base]
    language, script, region = maximize(t.language, t.script, t.region)
    chain.append(_join(language, script, region))
    if region and maximize(language, None, region)[1] == script:
        chain.append(_join(language, region))
    chain.append(_join(language, script))
    chain.append(language)
    return tuple(dict.fromkeys(chain))


def _script_of(tag: str) -> tuple[str, str | None]:
    t = parse_tag(tag)
    return t.language, maximize(t.language, t.script, t.region)[1]


def choose_variant(tag: str | None, keys: Iterable[str]) -> str | None:
    """The variant key (canonical, from `keys`) a recipient with language `tag` gets, or None
    for the template's default (no tag, or nothing in its chain)."""
    if not tag:
        return None
    available = {canonical(k): k for k in keys}
    for candidate in fallback_chain(tag):
        if candidate in available:
            return available[candidate]
    t = parse_tag(tag)
    if t.language in _NO_LANGUAGE:
        return None
    wanted = _script_of(tag)
    same = sorted(k for k in available if _script_of(k) == wanted)
    return available[same[0]] if same else None


class VariantSelector:
    """choose_variant for one template's keys, remembering each tag's answer."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(keys)
        self._chosen: dict[str, str | None] = {}

    def choose(self, tag: str | None) -> str | None:
        if not tag or not self.keys:
            return None
        try:
            return self._chosen[tag]
        except KeyError:
            chosen = self._chosen[tag] = choose_variant(tag, self.keys)
            return chosen
