"""Where attachments' bytes live: behind `AttachmentStore`, by default the database
(`MySQLStore`: chunks of ATTACHMENT_CHUNK_BYTES, so every runner on every host reads them with
ordinary statements, each well under max_allowed_packet).

An upload is read from the request in chunks and hashed as it goes: memory holds one chunk,
whatever the file's size. Content-addressed per API key: the same bytes uploaded again by the
same key are the same attachment (the new copy is dropped). `FileCache` keeps the files every
recipient of a job shares within a byte budget per runner.
"""
from __future__ import annotations

import hashlib
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Protocol

from mailjobs.attachments.policy import blocked_in_zip, blocked_name, is_zip
from mailjobs.dao_mysql import Dao
from mailjobs.records import Attachment

SPOOL_BYTES = 1024 * 1024   # an upload is spooled to a temporary file beyond this (ZIP check)


class UploadRejected(Exception):
    """The upload is refused: status, code, the field and a sentence (the error shape)."""

    def __init__(self, status: int, code: str, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.field, self.message = status, code, field, message


def new_public_id() -> str:
    return "att_" + secrets.token_hex(12)


class AttachmentStore(Protocol):
    def upload(self, api_key_id: int, stream: IO[bytes], content_type: str,
               filename: str | None, max_bytes: int) -> tuple[Attachment, bool]: ...

    def read(self, attachment: Attachment) -> bytes: ...


class MySQLStore:
    def __init__(self, dao: Dao, chunk_bytes: int) -> None:
        self.dao = dao
        self.chunk_bytes = chunk_bytes

    def _chunk_size(self) -> int:
        return max(4096, min(self.chunk_bytes, self.dao.max_packet_bytes() // 4))

    def upload(self, api_key_id: int, stream: IO[bytes], content_type: str,
               filename: str | None, max_bytes: int,
               on_chunk: Callable[[], None] | None = None) -> tuple[Attachment, bool]:
        """Store the stream's bytes; returns the attachment and whether it is new (False: the
        key had these bytes already). Raises UploadRejected (413 beyond `max_bytes`, 400 for an
        archive of blocked files, with nothing left stored)."""
        if filename and blocked_name(filename):
            raise UploadRejected(400, "forbidden_file_type", "filename",
                                 f"Gmail refuses {blocked_name(filename)} files: {filename}")
        size_chunk = self._chunk_size()
        digest = hashlib.sha256()
        attachment_id = self.dao.start_attachment(new_public_id(), api_key_id, content_type,
                                                  filename)
        done = False
        try:
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
                size = seq = 0
                zipped: bool | None = None
                buffer = bytearray()
                while True:
                    data = stream.read(min(65536, size_chunk))
                    if data:
                        size += len(data)
                        if size > max_bytes:
                            raise UploadRejected(
                                413, "payload_too_large", "body", f"the file is more than "
                                f"ATTACHMENT_MAX_BYTES ({max_bytes}) bytes")
                        digest.update(data)
                        buffer += data
                        if zipped is None and len(buffer) >= 4:
                            zipped = is_zip(bytes(buffer[:4]))
                        if zipped:
                            spool.write(data)
                    if len(buffer) >= size_chunk or (not data and buffer):
                        if on_chunk is not None:   # before each statement: reading the
                            on_chunk()             # client's body may have taken a while
                        self.dao.add_attachment_chunk(attachment_id, seq, bytes(buffer))
                        seq += 1
                        buffer.clear()
                    if not data:
                        break
                if size == 0:
                    raise UploadRejected(400, "validation_error", "body",
                                         "the body is empty: send the file's bytes")
                if zipped:
                    inside = blocked_in_zip(spool)   # type: ignore[arg-type]
                    if inside:
                        raise UploadRejected(400, "forbidden_file_type", "body",
                                             f"Gmail refuses archives holding {inside}")
            if on_chunk is not None:
                on_chunk()
            stored = self.dao.finish_attachment(attachment_id, api_key_id, digest.digest(),
                                                size, seq)
            done = True
            return stored, stored.id == attachment_id
        finally:
            if not done:
                if on_chunk is not None:
                    on_chunk()
                self.dao.drop_attachment(attachment_id)

    def store_bytes(self, api_key_id: int, data: bytes, content_type: str,
                    filename: str | None) -> Attachment:
        """A small file given inline in a job's POST, stored (once per key) like an upload."""
        existing = self.dao.attachment_by_sha(api_key_id, hashlib.sha256(data).digest())
        if existing is not None:
            return existing
        import io

        return self.upload(api_key_id, io.BytesIO(data), content_type, filename,
                           max(1, len(data)))[0]

    def read(self, attachment: Attachment) -> bytes:
        return self.dao.attachment_bytes(attachment.id)


class FileCache:
    """Files by attachment row id, least recently used out first, within `max_bytes` (a file
    bigger than that is never kept). Thread-safe; a miss reads outside the lock."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._files: OrderedDict[int, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}
        self.hits = self.misses = 0

    def _hit(self, key: int) -> bytes | None:
        """The cached file, counted as a hit and made the most recent (under the lock)."""
        data = self._files.get(key)
        if data is not None:
            self._files.move_to_end(key)
            self.hits += 1
        return data

    def get(self, key: int, load: Callable[[], bytes]) -> bytes:
        with self._lock:
            data = self._hit(key)
            if data is not None:
                return data
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:   # one thread reads a file; the others wait for it, then hit
            with self._lock:
                data = self._hit(key)
                if data is not None:
                    return data
                self.misses += 1
            try:
                data = load()
                self._keep(key, data)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return data

    def _keep(self, key: int, data: bytes) -> None:
        if len(data) <= self.max_bytes:
            with self._lock:
                if key not in self._files:
                    self._files[key] = data
                    self._size += len(data)
                while self._size > self.max_bytes:
                    _, old = self._files.popitem(last=False)
                    self._size -= len(old)

    @property
    def size(self) -> int:
        return self._size
