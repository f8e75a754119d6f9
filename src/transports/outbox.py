"""A development transport: each message becomes `<outbox_dir>/<job_id>/<recipient_id>.eml`.

Nothing is sent. Files are written atomically (temporary file, then os.replace), so a reader
never sees half a message and a resend simply replaces the file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from mailjobs.transports.base import OutgoingMessage, SendError, SendResult


def _header_block(path: Path) -> bytes:
    """The header section of an .eml file (everything before the first empty line)."""
    with path.open("rb") as handle:
        head = handle.read(65536)
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end >= 0:
            return head[:end]
    return head


def _message_id_of(headers: bytes) -> str | None:
    for line in headers.splitlines():
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"message-id":
            return value.strip().decode("ascii", "replace")
    return None


class OutboxTransport:
    name = "outbox"

    def __init__(self, outbox_dir: str | os.PathLike[str]) -> None:
        self.outbox_dir = Path(outbox_dir)
        self._made: set[int] = set()

    def _job_dir(self, job_id: int) -> Path:
        directory = self.outbox_dir / str(job_id)
        if job_id not in self._made:
            directory.mkdir(parents=True, exist_ok=True)
            self._made.add(job_id)
        return directory

    def send(self, msg: OutgoingMessage) -> SendResult:
        name = f"{msg.job_id}/{msg.recipient_id}.eml"
        try:
            directory = self._job_dir(msg.job_id)
            fd, temp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(msg.raw)
                os.replace(temp, directory / f"{msg.recipient_id}.eml")
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            raise SendError("transient", "outbox_error",
                            f"could not write {self.outbox_dir / name}: {exc}") from exc
        return SendResult(provider_id=name)

    def find_by_message_id(self, sender_email: str, message_id: str) -> str | None:
        wanted = message_id.strip().strip("<>")
        try:
            for path in sorted(self.outbox_dir.glob("*/*.eml")):
                found = _message_id_of(_header_block(path))
                if found is not None and found.strip("<>") == wanted:
                    return path.relative_to(self.outbox_dir).as_posix()
        except OSError as exc:
            raise SendError("transient", "outbox_error",
                            f"could not search {self.outbox_dir}: {exc}") from exc
        return None

    def close(self) -> None:
        pass
