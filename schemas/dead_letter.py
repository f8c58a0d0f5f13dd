"""Records of the dead-letter topic: the rejected payload and why."""

from __future__ import annotations

import base64

from pydantic import AwareDatetime, BaseModel, ConfigDict


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str
    detail: str
    source_topic: str
    partition: int
    offset: int
    key: str | None
    #: the payload, as text when it is UTF-8, else base64 (see payload_encoding)
    payload: str
    payload_encoding: str
    payload_bytes: int
    payload_truncated: bool
    rejected_at: AwareDatetime

    @staticmethod
    def render_payload(raw: bytes | None, limit: int) -> tuple[str, str, bool]:
        """Payload kept in the record: first ``limit`` bytes, text if possible."""
        raw = raw or b""
        kept = raw[:limit]
        try:
            return kept.decode("utf-8"), "utf-8", len(raw) > limit
        except UnicodeDecodeError:
            return base64.b64encode(kept).decode("ascii"), "base64", len(raw) > limit
