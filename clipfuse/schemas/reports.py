"""What indexing returns: per-document rejections and a batch report."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clipfuse.schemas.safetext import scrub, scrub_value

__all__ = ["IngestReport", "Rejection", "Stage"]

Stage = Literal["validate", "load", "embed", "upsert"]
#: the original document is kept with a rejection (for replay) when its JSON is at most this long
MAX_KEPT_DOCUMENT_CHARS = 256 * 1024


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Rejection(BaseModel):
    """One document that was not indexed, and why.

    Its texts are made safe to write: a lone surrogate (``"\\ud800"`` in the JSON) in the id,
    the reason or the kept document becomes U+FFFD, so a report is always valid UTF-8 JSON
    and printing it never raises.
    """

    model_config = ConfigDict(extra="forbid")

    id: str | None
    code: str
    reason: str
    stage: Stage
    #: index of the document in what was sent (the catalog's documents, blank lines not counted)
    position: int | None = None
    #: line of the catalog file it came from (JSONL catalogs read by clipfuse.sources)
    line: int | None = None
    at: datetime = Field(default_factory=_now)
    #: the document as received, for replay after a fix (None when it was too large to keep)
    document: dict[str, Any] | None = None

    @field_validator("id", "code", "reason")
    @classmethod
    def _safe_text(cls, value: str | None) -> str | None:
        return scrub(value) if value is not None else None

    @field_validator("document")
    @classmethod
    def _safe_document(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return scrub_value(value) if value is not None else None

    @staticmethod
    def keepable(raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            return None
        try:
            text = json.dumps(raw, default=str)
        except (TypeError, ValueError, RecursionError):
            return None
        return raw if len(text) <= MAX_KEPT_DOCUMENT_CHARS else None


class IngestReport(BaseModel):
    """The outcome of indexing a batch or a whole catalog."""

    model_config = ConfigDict(extra="forbid")

    indexed: int = 0
    deleted: int = 0
    rejected: list[Rejection] = []
    #: seconds spent per stage (validate, load, embed_images, embed_texts, bm25, upsert)
    stage_seconds: dict[str, float] = {}
    seconds: float = 0.0

    def merge(self, other: IngestReport) -> IngestReport:
        stages = dict(self.stage_seconds)
        for key, value in other.stage_seconds.items():
            stages[key] = stages.get(key, 0.0) + value
        return IngestReport(
            indexed=self.indexed + other.indexed,
            deleted=self.deleted + other.deleted,
            rejected=[*self.rejected, *other.rejected],
            stage_seconds=stages,
            seconds=self.seconds + other.seconds,
        )
