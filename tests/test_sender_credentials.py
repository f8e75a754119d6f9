"""The development token key (var/token_key) that encrypts stored OAuth grants when
TOKEN_ENCRYPTION_KEY is unset: created 0600 from the start, never readable by others even for a
moment, and reused."""
from __future__ import annotations

import os
import stat

from mailjobs.settings import Settings
from mailjobs.transports import credentials as sender_credentials


def test_the_dev_token_key_is_created_0600_without_a_chmod_after(tmp_path, monkeypatch):
    path = tmp_path / "var" / "token_key"
    monkeypatch.setattr(sender_credentials, "DEV_KEY_FILE", path)
    chmods = []
    # a chmod after the write would leave a window where the key is world-readable: none
    monkeypatch.setattr(os, "chmod", lambda *args, **kw: chmods.append(args))
    old_umask = os.umask(0o022)
    try:
        first = sender_credentials.fernet(Settings())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert chmods == []
    token = first.encrypt(b"grant")
    assert sender_credentials.fernet(Settings()).decrypt(token) == b"grant"   # reused
    assert sorted(p.name for p in path.parent.iterdir()) == ["token_key"]
