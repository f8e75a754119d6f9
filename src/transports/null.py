"""A transport that sends nothing and always succeeds (benchmarks of the runner itself)."""
from __future__ import annotations

from mailjobs.transports.base import OutgoingMessage, SendError, SendResult


class NullTransport:
    name = "null"

    def send(self, msg: OutgoingMessage) -> SendResult:
        return SendResult(provider_id=f"null-{msg.recipient_id}")

    def find_by_message_id(self, sender_email: str, message_id: str) -> str | None:
        raise SendError("transient", "unsupported",
                        "the null transport keeps no messages, so it cannot look one up")

    def close(self) -> None:
        pass
