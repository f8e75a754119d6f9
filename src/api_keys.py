"""API keys: `mj_<prefix>_<secret>`. The prefix finds the row; only SHA-256(secret) is stored.

The secret has 192 bits of entropy, so a plain SHA-256 (as GitHub and Stripe do for tokens) is
enough; it is compared with `hmac.compare_digest` in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from mailjobs import defaults
from mailjobs.dao_mysql import Dao
from mailjobs.records import ApiKey

KEY_PREFIX = "mj_"


@dataclass(frozen=True)
class IssuedKey:
    id: int
    key: str  # shown once, never stored


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """`mj_<prefix>_<secret>` -> (prefix, secret), or None when the shape is wrong."""
    if not key.startswith(KEY_PREFIX):
        return None
    prefix, sep, secret = key[len(KEY_PREFIX):].partition("_")
    if not sep or not prefix or not secret or len(prefix) > 16:
        return None
    return prefix, secret


TEST_MODES = ("outbox", "null")   # where a test key's messages go (issue 18)


def create_key(dao: Dao, name: str, senders: list[str], operator: bool = False,
               max_priority: int = 2, test_mode: str | None = None) -> IssuedKey:
    """A new key; max_priority 2 high, 1 normal, 0 low is the highest priority it may use;
    test_mode "outbox" or "null" makes a test key (its jobs never reach a real transport)."""
    if test_mode is not None and test_mode not in TEST_MODES:
        raise ValueError(f"test_mode must be one of {', '.join(TEST_MODES)}, got {test_mode!r}")
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(24)
    key_id = dao.insert_api_key(name, prefix, _hash(secret), senders, operator, max_priority,
                                test_mode)
    return IssuedKey(key_id, f"{KEY_PREFIX}{prefix}_{secret}")


class KeyVerifier:
    """Looks a presented key up and checks it; writes last_used_at at most once a minute."""

    def __init__(self, dao: Dao, touch_interval: float = defaults.KEY_TOUCH_INTERVAL) -> None:
        self.dao = dao
        self.touch_interval = touch_interval
        self._touched: dict[int, float] = {}

    def verify(self, presented: str | None) -> ApiKey | None:
        parts = split_key(presented.strip()) if presented else None
        if parts is None:
            return None
        prefix, secret = parts
        key = self.dao.api_key_by_prefix(prefix)
        if key is None or key.revoked_at is not None:
            return None
        if not hmac.compare_digest(key.secret_hash, _hash(secret)):
            return None
        now = time.monotonic()
        if now - self._touched.get(key.id, -1e9) >= self.touch_interval:
            self._touched[key.id] = now
            self.dao.touch_api_key(key.id)
        return key
