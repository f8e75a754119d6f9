"""Gmail OAuth credentials of each sender, stored in the database so every runner on every host
can use them; the JSON (refresh token included) is encrypted with Fernet.

The key comes from TOKEN_ENCRYPTION_KEY; for development, when it is unset, one is generated
into var/token_key (0600) and reused.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from mailjobs.dao_mysql import Dao
from mailjobs.settings import PROJECT_ROOT, Settings

log = logging.getLogger("mailjobs.credentials")
DEV_KEY_FILE = PROJECT_ROOT / "var" / "token_key"


class CredentialsMissing(Exception):
    """No usable credentials are stored for this sender."""


def fernet(settings: Settings) -> Fernet:
    if settings.token_encryption_key:
        return Fernet(settings.token_encryption_key.encode())
    if DEV_KEY_FILE.exists():
        return Fernet(DEV_KEY_FILE.read_bytes().strip())
    DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    tmp = DEV_KEY_FILE.with_name(f".{DEV_KEY_FILE.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # 0600 from the start
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    try:
        os.link(tmp, DEV_KEY_FILE)     # atomic; another process that got there first wins
    except FileExistsError:
        key = DEV_KEY_FILE.read_bytes().strip()
    finally:
        tmp.unlink()
    log.warning("TOKEN_ENCRYPTION_KEY is not set: generated a development key in %s; set "
                "TOKEN_ENCRYPTION_KEY in production (the same on every host)", DEV_KEY_FILE)
    return Fernet(key)


class CredentialStore:
    """Reads and writes the encrypted authorized-user info of senders."""

    def __init__(self, settings: Settings, dao: Dao) -> None:
        self.dao = dao
        self.settings = settings
        self._fernet = fernet(settings)
        self._lock = threading.Lock()

    def load_info(self, sender: str) -> dict[str, Any]:
        blob = self.dao.sender_credentials(sender)
        if blob is None:
            raise CredentialsMissing(f"no Gmail credentials stored for {sender}: run "
                                     f"`mailjobs auth {sender}`")
        try:
            info: dict[str, Any] = json.loads(self._fernet.decrypt(blob))
            return info
        except InvalidToken:
            raise CredentialsMissing(f"stored credentials of {sender} cannot be decrypted: "
                                     "TOKEN_ENCRYPTION_KEY differs from the one that stored "
                                     "them") from None

    def store_info(self, sender: str, info: dict[str, Any], resume: bool = False) -> int:
        blob = self._fernet.encrypt(json.dumps(info).encode())
        with self._lock:
            return self.dao.save_sender_credentials(sender, blob, resume=resume)

    # --- service accounts with domain-wide delegation (issue 18) ---------------------------
    def store_delegated(self, pattern: str, key_info: dict[str, Any],
                        scopes: list[str]) -> int:
        """Store a service-account key for an address or '*@domain' with the scopes to ask
        for; its senders are authorised again and their paused jobs resumed (returns how many)."""
        blob = self._fernet.encrypt(json.dumps({"service_account": key_info,
                                                "scopes": scopes}).encode())
        return self.dao.save_delegated_key(pattern.lower(), key_info["client_email"], blob)

    def load_delegated(self, sender: str) -> dict[str, Any] | None:
        """{"service_account": …, "scopes": […], "pattern": …} a sender sends with, or None."""
        found = self.dao.delegated_key(sender)
        if found is None:
            return None
        pattern, blob = found
        try:
            stored = json.loads(self._fernet.decrypt(blob))
        except InvalidToken:
            raise CredentialsMissing(f"the stored service-account key for {pattern} cannot be "
                                     "decrypted: TOKEN_ENCRYPTION_KEY differs from the one that "
                                     "stored it") from None
        return {**stored, "pattern": pattern}
