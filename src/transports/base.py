"""The interface every mail transport implements, and the one error type they raise.

A transport object is used by one sending thread only; the runner makes one per thread.
`SendError.kind` tells the runner what to do with the recipient and the sender:

- permanent:     fail this recipient (bad address, message too large, ...)
- transient:     retry later; the message was certainly not sent
- in_doubt:      5xx, timeout, connection reset: it may have been sent (look it up before resending)
- rate:          per-minute rate limit; defer, don't count the attempt
- daily_limit:   the sender's sending limit; defer the sender until `retry_after`
- sender_auth:   the sender's OAuth grant is revoked or invalid; pause the sender
- sender_config: the sender's account or the project is not set up to send; pause the sender
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mailjobs.states import ErrorKind

KINDS = frozenset(ErrorKind)


@dataclass(frozen=True)
class OutgoingMessage:
    job_id: int
    recipient_id: int
    sender_email: str
    to_email: str
    message_id: str        # RFC 5322 Message-ID incl. angle brackets, already in `raw`
    raw: bytes             # full RFC 5322 message


@dataclass(frozen=True)
class SendResult:
    provider_id: str | None   # Gmail message id, outbox file name, ...


class SendError(Exception):
    """A send (or look-up) failed; `str(error)` is a sentence an operator can act on."""

    def __init__(self, kind: str, error_code: str, message: str, *,
                 retry_after: float | None = None, status: int | None = None,
                 attempted: bool = True) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown SendError kind {kind!r}")
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.error_code = error_code
        self.message = message
        self.retry_after = retry_after
        self.status = status
        # False: the message never left (no connection to the server was free); the attempt
        # does not count towards MAX_ATTEMPTS and the sender's daily count is given back.
        self.attempted = attempted
        # set by a transport when the server refused a new connection (the server's words)
        self.refusal: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the keyword-only arguments
        return (SendError, (self.kind, self.error_code, self.message),
                {"retry_after": self.retry_after, "status": self.status,
                 "attempted": self.attempted})

    def __repr__(self) -> str:
        return (f"SendError({self.kind.value!r}, {self.error_code!r}, {self.message!r}, "
                f"retry_after={self.retry_after!r}, status={self.status!r}, "
                f"attempted={self.attempted!r})")


class Transport(Protocol):
    name: str

    def send(self, msg: OutgoingMessage) -> SendResult:
        """Send one message; raise SendError on failure."""
        ...

    def find_by_message_id(self, sender_email: str, message_id: str) -> str | None:
        """The provider id of an already-sent message with this Message-ID, or None.
        Raises SendError if the look-up is unsupported or fails."""
        ...

    def close(self) -> None:
        ...
