"""Cursors: a ranking frozen for a while, so page 2 continues exactly where page 1 ended.

The first search stores its whole ranked window (ids, scores, explanations,
variants, facets, total; payloads are read again per page) under a random key,
for ``ttl_s`` seconds, and returns a token naming the key and the next offset,
signed with HMAC-SHA256. A request with the token reads the frozen ranking and
cuts the next page from it: no document repeats or goes missing across pages,
even while the index changes. A token whose signature does not match (forged,
edited, or from a service with another secret) or whose ranking has expired is
an :class:`~clipfuse.errors.InvalidQuery` saying what to do.

Stores: :class:`MemoryCursorStore` (one process: the embedded engine, the CLI) and
:class:`RedisCursorStore` (the service and workers, shared by every instance; set
the same secret on each, ``CLIPFUSE_SEARCH__CURSOR_SECRET``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, model_validator

from clipfuse.errors import InvalidQuery
from clipfuse.schemas.search import (
    BoostExplanation,
    Explanation,
    FacetScope,
    FacetStats,
    FusionMethod,
    Hit,
    SignalExplanation,
    SignalScores,
    Total,
    Variant,
)

__all__ = [
    "CursorCodec",
    "CursorStore",
    "FileCursorStore",
    "FrozenRanking",
    "MemoryCursorStore",
    "RedisCursorStore",
]

_VERSION = "c1"


class FrozenRanking(BaseModel):
    """What a cursor keeps: the ranked window, column by column, and the response's window-wide parts.

    A search ranks a window of ~300 documents and shows ten. Building a validated :class:`Hit`
    for every one of them and storing their JSON was most of the searcher's own time (~3 ms of
    a 6 ms query at 100k documents, docs/benchmarks.md), so the window is kept as columns (one
    list per attribute, lists of floats serialise fast) and only a page becomes hits
    (:meth:`page`), on the first page and on the next ones alike. Hit ``i`` (0-based) has rank
    ``i + 1``; its final score is ``scores[i]``; payloads are not kept (read again per page).

    Build it from the columns (the searcher) or from ``hits=`` (:class:`Hit` s or their
    dicts, e.g. a ranking frozen by an earlier version), which are turned into columns.
    """

    model_config = ConfigDict(extra="forbid")

    ids: list[str]
    scores: list[float]
    #: each hit's fused score; None for the whole column: every hit's equals its score. A None
    #: entry: that hit has no explanation
    fused: list[float | None] | None = None
    #: the window-normalised fused scores (with boosts); None for the whole column: none
    normalised: list[float | None] | None = None
    #: the request's signals, in order; per signal, aligned with ``ids``: raw score, rank, contribution
    #: (None: the hit was not in that signal's candidates)
    signals: list[str] = []
    signal_scores: list[list[float | None]] = []
    signal_ranks: list[list[int | None]] = []
    contributions: list[list[float | None]] = []
    #: sparse columns, by 0-based position
    boosts: dict[int, list[BoostExplanation]] = {}
    rules: dict[int, str] = {}
    groups: dict[int, str] = {}
    variants: dict[int, list[Variant]] = {}
    k: int
    fusion: FusionMethod
    fused_by: str
    total: Total | None = None
    facets: dict[str, dict[str, int]] = {}
    facets_stats: dict[str, FacetStats] = {}
    facet_scope: FacetScope | None = None
    facets_count: str | None = None
    collapsed_by: str | None = None
    rules_applied: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _columns_of_hits(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hits" in data:
            data = dict(data)
            hits = [h if isinstance(h, Hit) else Hit.model_validate(h) for h in data.pop("hits")]
            data.update(_columns(hits))
        return data

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hits(self) -> list[Hit]:
        """Every frozen hit (without payloads)."""
        return self.page(0, len(self.ids))

    def page(self, start: int, end: int, payloads: Mapping[str, dict[str, Any]] | None = None) -> list[Hit]:
        """The hits ranked ``start + 1`` to ``end``, with their payloads from ``payloads`` when given."""
        out = []
        for i in range(start, min(end, len(self.ids))):
            doc = self.ids[i]
            score = self.scores[i]
            raw: dict[str, float | None] = {}
            ranks: dict[str, float | None] = {}
            parts: dict[str, SignalExplanation] = {}
            for s, name in enumerate(self.signals):
                value = self.signal_scores[s][i]
                at = self.signal_ranks[s][i]
                raw[name] = value
                ranks[name] = None if at is None else float(at)
                contribution = self.contributions[s][i]
                if value is not None and at is not None and contribution is not None:
                    parts[name] = SignalExplanation(raw=value, rank=at, contribution=contribution)
            fused = score if self.fused is None else self.fused[i]
            explanation = None
            if fused is not None:
                explanation = Explanation(
                    signals=parts,
                    fused=fused,
                    normalised=None if self.normalised is None else self.normalised[i],
                    boosts=self.boosts.get(i, []),
                    final=score,
                )
            extra: dict[str, Any] = {} if payloads is None else {"payload": payloads.get(doc, {})}
            out.append(
                Hit(
                    id=doc,
                    rank=i + 1,
                    score=score,
                    signals=SignalScores(**raw),
                    ranks=SignalScores(**ranks),
                    explanation=explanation,
                    rule=self.rules.get(i),
                    group=self.groups.get(i),
                    variants=self.variants.get(i, []),
                    **extra,
                )
            )
        return out


def _columns(hits: Sequence[Hit]) -> dict[str, Any]:
    """The columns of :class:`FrozenRanking` for ready hits (their payloads are not kept)."""
    names: list[str] = []
    for hit in hits:
        for name in SignalScores.model_fields:
            if name not in names and (
                name in hit.signals.model_fields_set
                or name in hit.ranks.model_fields_set
                or (hit.explanation is not None and name in hit.explanation.signals)
            ):
                names.append(name)
    scores: list[list[float | None]] = [[] for _ in names]
    ranks: list[list[int | None]] = [[] for _ in names]
    contributions: list[list[float | None]] = [[] for _ in names]
    for hit in hits:
        explained = hit.explanation.signals if hit.explanation is not None else {}
        for s, name in enumerate(names):
            part = explained.get(name)
            rank = getattr(hit.ranks, name)
            scores[s].append(part.raw if part is not None else getattr(hit.signals, name))
            ranks[s].append(part.rank if part is not None else None if rank is None else int(rank))
            contributions[s].append(part.contribution if part is not None else None)
    return {
        "ids": [h.id for h in hits],
        "scores": [h.score for h in hits],
        "fused": [h.explanation.fused if h.explanation is not None else None for h in hits],
        "normalised": [h.explanation.normalised if h.explanation is not None else None for h in hits],
        "signals": names,
        "signal_scores": scores,
        "signal_ranks": ranks,
        "contributions": contributions,
        "boosts": {i: h.explanation.boosts for i, h in enumerate(hits) if h.explanation and h.explanation.boosts},
        "rules": {i: h.rule for i, h in enumerate(hits) if h.rule is not None},
        "groups": {i: h.group for i, h in enumerate(hits) if h.group is not None},
        "variants": {i: h.variants for i, h in enumerate(hits) if h.variants},
    }


@runtime_checkable
class CursorStore(Protocol):
    def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    def get(self, key: str) -> bytes | None: ...


class MemoryCursorStore:
    """In-process store: at most ``max_entries`` rankings (the oldest go first), each for its TTL."""

    def __init__(self, max_entries: int = 1_000) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + ttl_s, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] < time.monotonic():
                del self._items[key]
                return None
            return item[1]


class RedisCursorStore:
    """Redis store (``SET key value EX ttl``) over the caller's ``redis.Redis`` client."""

    def __init__(self, client: Any, prefix: str = "clipfuse:cursor:") -> None:
        self.client = client
        self.prefix = prefix

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.client.set(self.prefix + key, value, px=max(1, int(ttl_s * 1000)))

    def get(self, key: str) -> bytes | None:
        value = self.client.get(self.prefix + key)
        return bytes(value) if value is not None else None

    def secret(self) -> bytes:
        """A signing key shared by every instance using this Redis (generated once, ``SET NX``)."""
        name = self.prefix + ".secret"
        self.client.set(name, secrets.token_bytes(32), nx=True)
        return bytes(self.client.get(name))


class FileCursorStore:
    """One file per ranking in a folder (the CLI: each ``clipfuse search`` is a new process)."""

    def __init__(self, directory: str | os.PathLike[str], max_entries: int = 1_000) -> None:
        self.directory = Path(directory)
        self.max_entries = max_entries

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        expires = time.time() + ttl_s
        tmp = self.directory / f".{key}.tmp"
        tmp.write_bytes(f"{expires:.3f}\n".encode() + value)
        os.replace(tmp, self.directory / key)
        files = sorted(self.directory.glob("[!.]*"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.max_entries)]:
            with contextlib.suppress(OSError):
                old.unlink()

    def get(self, key: str) -> bytes | None:
        if not key.replace("-", "").replace("_", "").isalnum():
            return None
        try:
            raw = (self.directory / key).read_bytes()
        except OSError:
            return None
        head, _, body = raw.partition(b"\n")
        try:
            expired = float(head) < time.time()
        except ValueError:
            return None
        return None if expired else body

    def secret(self) -> bytes:
        """A signing key kept beside the rankings (created once, readable by this user only)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / ".secret"
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        return path.read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Freezes rankings into a store and signs / checks the tokens that name them."""

    def __init__(self, store: CursorStore, *, secret: bytes | str | None = None, ttl_s: float = 600.0) -> None:
        if ttl_s <= 0:
            raise ValueError("cursor ttl_s must be > 0")
        self.store = store
        self.ttl_s = ttl_s
        if secret is None:
            secret = secrets.token_bytes(32)  # one process: tokens from elsewhere are rejected as forged
        self._secret = secret.encode() if isinstance(secret, str) else secret

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest()[:18])

    def token(self, key: str, offset: int) -> str:
        body = f"{_VERSION}.{key}.{offset}"
        return f"{body}.{self._sign(body)}"

    def freeze(self, ranking: FrozenRanking) -> str:
        """Store ``ranking``; returns its key."""
        key = _b64(secrets.token_bytes(12))
        self.store.put(key, zlib.compress(ranking.model_dump_json().encode(), 1), self.ttl_s)
        return key

    def read(self, token: str) -> tuple[str, int]:
        """``(key, offset)`` of a token; :class:`InvalidQuery` if it is not one this codec signed."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            raise InvalidQuery("cursor: not a clipfuse cursor; pass the 'next_cursor' of a previous response unchanged")
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(body), parts[3]):
            raise InvalidQuery(
                "cursor: the signature does not match (edited, or made by a service with another cursor secret); "
                "pass 'next_cursor' unchanged, or run the search again without a cursor"
            )
        try:
            offset = int(parts[2])
        except ValueError:
            raise InvalidQuery("cursor: malformed offset") from None
        return parts[1], offset

    def load(self, token: str) -> tuple[FrozenRanking, str, int]:
        """The frozen ranking a token names, its key and the offset of the page it asks for."""
        key, offset = self.read(token)
        raw = self.store.get(key)
        if raw is None:
            raise InvalidQuery(
                f"cursor: the ranking it continues has expired (rankings are kept {self.ttl_s:g} s) or was made by "
                "another process; run the search again without a cursor"
            )
        try:
            return FrozenRanking.model_validate_json(zlib.decompress(raw)), key, offset
        except (zlib.error, ValueError) as e:
            raise InvalidQuery(f"cursor: the stored ranking cannot be read ({e}); run the search again") from None
