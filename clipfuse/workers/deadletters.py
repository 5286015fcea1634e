"""The dead-letter store and the counters behind ``clipfuse status``, in Redis.

A document the worker cannot index (corrupt image, unreachable URL, invalid
fields...) is acknowledged on the queue and kept here with its reason, so that
an operator can list it, fix the cause and replay it::

    clipfuse dead-letters list
    clipfuse dead-letters replay --id p007-00042      # or --all, --code image_unreachable

Layout, per index (``clipfuse:<index>:...``):

- ``dead`` (hash): key -> :class:`~clipfuse.schemas.Rejection` JSON. The key is the
  document id, so a document rejected again replaces its older record, and a
  document that is later indexed successfully is removed (the store shows what is
  broken *now*). Rejections without an id (a message that is not even a list of
  documents) get a generated key.
- ``dead:order`` (sorted set): key -> time of the rejection, for paging and trimming
  (at most ``CLIPFUSE_WORKER__DEAD_LETTER_MAX`` are kept; the oldest go first).
- ``stats`` (hash): running totals (enqueued, refused, indexed, rejected, deleted,
  superseded, retries, republished, returned, batches). Delivery is at least once,
  so ``indexed`` counts writes, redeliveries included; the engine's count is the
  number of documents.

The Redis server is ``CLIPFUSE_WORKER__STATE_URL``, by default the broker when the
broker is Redis, else ``redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from clipfuse.schemas import Rejection
from clipfuse.settings import Settings, get_settings
from clipfuse.workers.broker import broker_kind

__all__ = ["COUNTERS", "DeadLetter", "DeadLetters", "Enqueued", "ReplayReport", "state_url"]

#: the counters kept in the ``stats`` hash
COUNTERS = (
    "enqueued",
    "refused",
    "indexed",
    "rejected",
    "deleted",
    "superseded",
    "retries",
    "republished",
    "returned",
    "batches",
)

# delete entries whose value is still the one read (a newer rejection of the same id stays)
_COMPARE_AND_DELETE = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"""

_TRIM = """
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
if over <= 0 then return 0 end
local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
for _, key in ipairs(old) do redis.call('HDEL', KEYS[1], key) end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
return over
"""


def state_url(settings: Settings) -> str:
    """The Redis holding dead letters and counters."""
    if settings.worker.state_url:
        return settings.worker.state_url
    if broker_kind(settings.broker.url) == "redis":
        return settings.broker.url
    return "redis://127.0.0.1:6379/0"


class Enqueued(Protocol):
    """What :meth:`DeadLetters.replay` reads of what its ``enqueue`` returns (the producer's
    :class:`~clipfuse.workers.producer.EnqueueReport`): the documents refused, by position."""

    @property
    def refused(self) -> Sequence[Rejection]: ...


@dataclass(frozen=True)
class DeadLetter:
    """One stored rejection and the key it is stored under (the document id when known)."""

    key: str
    rejection: Rejection
    raw: str = field(repr=False, default="")

    @property
    def replayable(self) -> bool:
        return self.rejection.document is not None


@dataclass
class ReplayReport:
    """What ``replay`` did: re-enqueued keys, and the ones it could not re-enqueue and why."""

    replayed: list[str] = field(default_factory=list)
    #: refused again by the producer's validation: key -> reason (they stay in the store)
    still_invalid: dict[str, str] = field(default_factory=dict)
    #: stored without the document (too large to keep, or not a JSON object)
    not_replayable: list[str] = field(default_factory=list)
    #: asked for but not in the store
    missing: list[str] = field(default_factory=list)


class DeadLetters:
    """Dead letters and counters of one index in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        index: str,
        *,
        prefix: str = "clipfuse",
        max_items: int = 100_000,
    ) -> None:
        self.client = client
        self.index = index
        self.max_items = max_items
        base = f"{prefix}:{index}"
        self.items_key = f"{base}:dead"
        self.order_key = f"{base}:dead:order"
        self.stats_key = f"{base}:stats"
        self._compare_and_delete = client.register_script(_COMPARE_AND_DELETE)
        self._trim = client.register_script(_TRIM)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DeadLetters:
        settings = settings or get_settings()
        client = redis.Redis.from_url(
            state_url(settings), socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
        )
        return cls(client, settings.index, max_items=settings.worker.dead_letter_max)

    def close(self) -> None:
        self.client.close()

    # -- writing (the worker) --------------------------------------------------------
    def record(
        self,
        rejections: Sequence[Rejection] = (),
        *,
        indexed_ids: Iterable[str] = (),
        counts: Mapping[str, int] | None = None,
    ) -> None:
        """Store rejections, forget ids that were just indexed, add to counters: one transaction."""
        indexed = [i for i in indexed_ids]
        pipe = self.client.pipeline(transaction=True)
        if indexed:
            pipe.hdel(self.items_key, *indexed)
            pipe.zrem(self.order_key, *indexed)
        now = time.time()
        for rejection in rejections:
            key = rejection.id if rejection.id else f"~{uuid.uuid4().hex}"
            pipe.hset(self.items_key, key, rejection.model_dump_json())
            pipe.zadd(self.order_key, {key: now})
        for name, value in (counts or {}).items():
            if value:
                pipe.hincrby(self.stats_key, name, int(value))
        pipe.execute()
        if rejections:
            self._trim(keys=[self.items_key, self.order_key], args=[self.max_items])

    def add(self, rejections: Sequence[Rejection]) -> int:
        """Store rejections (and count them as rejected)."""
        self.record(rejections, counts={"rejected": len(rejections)})
        return len(rejections)

    def incr(self, **counts: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, value in counts.items():
            if value:
                pipe.hincrby(self.stats_key, name, int(value))
        pipe.execute()

    # -- reading ---------------------------------------------------------------------
    def count(self) -> int:
        return int(self.client.zcard(self.order_key))

    def stats(self) -> dict[str, int]:
        raw = self.client.hgetall(self.stats_key)
        values = {k.decode() if isinstance(k, bytes) else str(k): int(v) for k, v in raw.items()}
        return {name: values.get(name, 0) for name in COUNTERS} | {k: v for k, v in values.items() if k not in COUNTERS}

    def _load(self, keys: Sequence[str]) -> list[DeadLetter]:
        if not keys:
            return []
        values = self.client.hmget(self.items_key, list(keys))
        out = []
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            out.append(DeadLetter(key=key, rejection=Rejection.model_validate_json(text), raw=text))
        return out

    def get(self, keys: Sequence[str]) -> list[DeadLetter]:
        return self._load(list(keys))

    def all_keys(self) -> list[str]:
        return [k.decode() if isinstance(k, bytes) else str(k) for k in self.client.zrange(self.order_key, 0, -1)]

    # -- removing --------------------------------------------------------------------
    def remove(self, letters: Sequence[DeadLetter]) -> int:
        """Delete these entries unless they were replaced by a newer rejection meanwhile."""
        if not letters:
            return 0
        args: list[str] = []
        for letter in letters:
            args.extend((letter.key, letter.raw))
        return int(self._compare_and_delete(keys=[self.items_key, self.order_key], args=args))

    def pop(self, keys: Sequence[str]) -> list[DeadLetter]:
        """Read and delete entries."""
        letters = self.get(keys)
        self.remove(letters)
        return letters

    def clear(self) -> int:
        """Delete every dead letter of this index (counters stay); returns how many there were."""
        count = self.count()
        self.client.delete(self.items_key, self.order_key)
        return count

    def reset_stats(self) -> None:
        self.client.delete(self.stats_key)

    # -- replay ----------------------------------------------------------------------
    def replay(
        self,
        enqueue: Callable[[list[dict[str, Any]]], Enqueued],
        *,
        keys: Sequence[str] | None = None,
        codes: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> ReplayReport:
        """Re-enqueue stored documents (all, or ``keys``, or those with a ``codes`` code).

        Entries are removed only after their document was accepted by the producer
        (at least once: a crash in between replays a document twice, which is harmless).
        """
        report = ReplayReport()
        if keys is not None:
            letters = self.get(keys)
            found = {letter.key for letter in letters}
            report.missing = [k for k in keys if k not in found]
        else:
            letters = self.get(self.all_keys())
        if codes:
            letters = [letter for letter in letters if letter.rejection.code in set(codes)]
        if limit is not None:
            letters = letters[:limit]
        replayable = []
        for letter in letters:
            if letter.replayable:
                replayable.append(letter)
            else:
                report.not_replayable.append(letter.key)
        if not replayable:
            return report
        result = enqueue([dict(letter.rejection.document or {}) for letter in replayable])
        refused = {r.position: r.reason for r in result.refused if r.position is not None}
        accepted = []
        for position, letter in enumerate(replayable):
            if position in refused:
                report.still_invalid[letter.key] = refused[position]
            else:
                accepted.append(letter)
        self.remove(accepted)
        report.replayed = [letter.key for letter in accepted]
        return report

    def pages(
        self, *, offset: int = 0, page_size: int = 1_000, newest_first: bool = True
    ) -> Iterator[builtins.list[DeadLetter]]:
        """Every dead letter from ``offset`` on, ``page_size`` at a time (bounded memory for large stores)."""
        start = offset
        read = self.client.zrevrange if newest_first else self.client.zrange
        while True:
            keys = read(self.order_key, start, start + page_size - 1)
            if not keys:
                return
            yield self._load([k.decode() if isinstance(k, bytes) else str(k) for k in keys])
            start += len(keys)

    # defined last: inside the class body, `list` means this method from here on
    def list(self, limit: int | None = 50, offset: int = 0, *, newest_first: bool = True) -> builtins.list[DeadLetter]:
        """A page of dead letters, newest first by default; ``limit=None``: every one from ``offset`` on."""
        if limit is None:
            return [letter for page in self.pages(offset=offset, newest_first=newest_first) for letter in page]
        if limit <= 0:
            return []
        end = offset + limit - 1
        keys = (
            self.client.zrevrange(self.order_key, offset, end)
            if newest_first
            else self.client.zrange(self.order_key, offset, end)
        )
        return self._load([k.decode() if isinstance(k, bytes) else str(k) for k in keys])
