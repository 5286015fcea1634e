"""Batches of messages: acknowledged only when their documents are safe (the ack-after-write logic).

Batching: the ``clipfuse.ingest`` task is a celery-batches task. The worker buffers up to
``CLIPFUSE_WORKER__BATCH_MESSAGES`` messages (or waits at most
``CLIPFUSE_WORKER__FLUSH_INTERVAL_S``) and hands them to :class:`BatchProcessor` as one
batch, which feeds the ingest pipeline in chunks of ``CLIPFUSE_BATCH_SIZE`` documents. So
many small messages reach the GPU as large batches, and large producers can send up to
``MAX_DOCUMENTS_PER_MESSAGE`` documents per message. A repeated id keeps its last version,
by the pipeline's one rule (:func:`clipfuse.ingest.pipeline.last_versions`); the earlier
copies are counted as superseded.

Acknowledgement: stock celery-batches acknowledges every message of a batch when the
batch function returns *or raises*. :class:`ClipfuseBatches` overrides ``flush`` so that
the batch's outcome decides, per message: acknowledge (its documents were written or
dead-lettered, or it was re-published), or return it to the broker
(``reject(requeue=True)``: shutdown during an outage, or anything unexpected). A message is
never acknowledged before its documents are safe.

Retries: a retryable error (the engine unreachable, the embedded store held by another
process, the dead-letter Redis unreachable) is retried in the worker with exponential
backoff and jitter for up to ``CLIPFUSE_WORKER__RETRY_IN_PROCESS_S``; after that the
batch's unfinished messages are re-published with their attempt count and acknowledged,
so an outage never turns into rejections and never pins messages to one worker. Upserts
are idempotent (point id = uuid5 of the document id), so work repeated after a retry or a
redelivery is harmless.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from clipfuse.errors import BackendError, BackendUnavailable, ConfigurationError, EmbeddingError
from clipfuse.ingest.pipeline import document_key, last_versions
from clipfuse.schemas import IngestReport, Rejection, Stage
from clipfuse.schemas import limits as L
from clipfuse.settings import WorkerSettings
from clipfuse.workers.metrics import WorkerMetrics

__all__ = ["RETRYABLE", "BatchProcessor", "ClipfuseBatches"]

log = logging.getLogger(__name__)

#: errors that mean "not now": retried with backoff, never turned into rejections
RETRYABLE: tuple[type[BaseException], ...] = (
    BackendUnavailable,
    ConfigurationError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


# -- the Celery side ----------------------------------------------------------------------------
class ClipfuseBatches(Batches):
    """celery-batches, except that a message is acknowledged only when the batch says so."""

    abstract = True

    def flush(self, requests: Any) -> Any:
        requests = list(requests)
        batch = ([SimpleRequest.from_request(r) for r in requests],)

        def on_return(result: Any) -> None:
            if isinstance(result, Mapping):
                requeue = {int(i) for i in result.get("requeue", ())}
            else:  # the batch function raised (celery-batches would ack): give everything back
                log.error("batch ended without an outcome (%r); returning its %d messages", result, len(requests))
                requeue = set(range(len(requests)))
            for position, request in enumerate(requests):
                try:
                    if position in requeue:
                        request.reject(requeue=True)
                    else:
                        request.acknowledge()
                except Exception:  # the connection is gone: the broker redelivers on its own
                    log.exception("could not acknowledge / return message %s", request.id)

        return self._pool.apply_async(apply_batches_task, (self, batch, 0, None), callback=on_return)


# -- the batch loop (no Celery below this line) ------------------------------------------------
class _Stop(Exception):
    """The batch cannot finish now: ``shutdown`` requested, or in-process ``retries`` ran out."""

    def __init__(self, why: Literal["shutdown", "retries"]) -> None:
        super().__init__(why)
        self.why = why


@dataclass
class _Segment:
    op: Literal["upsert", "delete", "step"]
    items: list[Any] = field(default_factory=list)
    #: the message each item came from
    origins: list[int] = field(default_factory=list)

    @property
    def positions(self) -> list[int]:
        return sorted(set(self.origins))


def _stage_of(error: BaseException) -> Stage:
    if isinstance(error, BackendError):
        return "upsert"
    if isinstance(error, EmbeddingError):
        return "embed"
    return "embed"


class BatchProcessor:
    """Runs one flushed batch of messages: upserts and deletes in order, retries, dead letters.

    Everything it needs is passed in, so it runs without Celery (and is tested so).
    :meth:`process` never raises; it returns ``{"requeue": [positions]}``, the messages
    to give back to the broker, every other message being safe to acknowledge.
    """

    def __init__(
        self,
        *,
        index_batch: Callable[[list[Any]], IngestReport],
        delete: Callable[[list[str]], IngestReport],
        record: Callable[..., None],
        republish: Callable[[Sequence[Mapping[str, Any]]], None],
        should_stop: Callable[[], bool] = lambda: False,
        worker: WorkerSettings | None = None,
        batch_size: int = 64,
        metrics: WorkerMetrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        steps: Mapping[str, Callable[[Mapping[str, Any]], None]] | None = None,
    ) -> None:
        self.index_batch = index_batch
        #: other ops, run in their place among the upserts and deletes (``reindex``: clipfuse.reindex.queue)
        self.steps = dict(steps or {})
        self.delete = delete
        self.record = record
        self.republish = republish
        self.should_stop = should_stop
        self.worker = worker or WorkerSettings()
        self.batch_size = batch_size
        self.metrics = metrics
        self.sleep = sleep
        self.clock = clock
        self.batches = 0
        self._attempt = 0
        self._failing_since: float | None = None
        self._waited = False
        self._superseded = 0
        self._done: set[int] = set()
        self._totals = IngestReport()
        #: counters not yet written to the store (written with the next record)
        self._pending_counts: dict[str, int] = {}

    # -- public ---------------------------------------------------------------------------
    def process(self, messages: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
        self.batches += 1
        number = self.batches
        started = time.perf_counter()
        self._failing_since = None
        self._waited = False
        self._superseded = 0
        self._pending_counts = {"batches": 1}
        self._totals = IngestReport()
        #: messages whose documents are all written or dead-lettered (safe to acknowledge)
        self._done = set()
        try:
            self._attempt = max((_attempt_of(m) for m in messages), default=0)
            segments, bad, bad_positions = self._plan(messages)
            documents = sum(len(s.items) for s in segments if s.op == "upsert")
            deletes = sum(len(s.items) for s in segments if s.op == "delete")
            log.info("batch %d start: %d messages, %d documents, %d deletes", number, len(messages), documents, deletes)
            if self.metrics:
                self.metrics.batch_in_progress.set(1)
                self.metrics.batch_messages.observe(len(messages))
                self.metrics.batch_documents.observe(documents)
            if bad:
                self._retrying("recording rejected messages", lambda: self._record(bad, [], {"rejected": len(bad)}))
                self._totals = self._totals.merge(IngestReport(rejected=bad))
            self._done.update(bad_positions)
            for segment in segments:
                self._run_segment(segment)
            outcome: dict[str, list[int]] = {"requeue": []}
        except _Stop as stop:
            unfinished = [p for p in range(len(messages)) if p not in self._done]
            outcome = self._stop(number, stop, messages, unfinished)
        except Exception:  # a bug here must not ack anything
            log.exception("batch %d failed; returning its %d messages to the broker", number, len(messages))
            outcome = {"requeue": list(range(len(messages)))}
        finally:
            if self.metrics:
                self.metrics.batch_in_progress.set(0)
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self._flush_counts()
        log.info(
            "batch %d done: %d indexed, %d rejected, %d deleted, %d superseded, %d returned in %.2fs",
            number,
            self._totals.indexed,
            len(self._totals.rejected),
            self._totals.deleted,
            self._superseded,
            len(outcome["requeue"]),
            time.perf_counter() - started,
        )
        return outcome

    # -- planning -------------------------------------------------------------------------
    def _plan(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[_Segment], list[Rejection], list[int]]:
        """Group consecutive upserts into one segment; deletes stay in their place; bad messages out."""
        segments: list[_Segment] = []
        bad: list[Rejection] = []
        bad_positions: list[int] = []
        for position, message in enumerate(messages):
            if isinstance(message, Mapping) and message.get("op") in self.steps:
                segments.append(_Segment("step", [message], [position]))
                continue
            op, items, rejections = _classify(message)
            if rejections:
                bad.extend(rejections)
            elif op == "upsert" and segments and segments[-1].op == "upsert":
                segments[-1].items.extend(items)
                segments[-1].origins.extend([position] * len(items))
            elif op in ("upsert", "delete"):
                # a delete is one item (its id list), so that it completes as a whole
                entries = list(items) if op == "upsert" else [list(items)]
                segments.append(_Segment(op, entries, [position] * len(entries)))
            if rejections:
                bad_positions.append(position)
        return segments, bad, bad_positions

    # -- running --------------------------------------------------------------------------
    def _run_segment(self, segment: _Segment) -> None:
        if segment.op == "step":
            message = segment.items[0]
            self._retrying(f"running {message['op']}", lambda: self.steps[message["op"]](message))
            self._done.update(segment.origins)
            return
        if segment.op == "delete":
            ids = segment.items[0]
            report = self._retrying("deleting", lambda: self.delete(ids))
            self._retrying("recording", lambda: self._record([], [], {"deleted": len(ids)}))
            if self.metrics:
                self.metrics.deleted.inc(len(ids))
            self._totals = self._totals.merge(report)
            self._done.update(segment.origins)
            return
        # the pipeline's rule: a repeated id keeps its last version (a later update, or the same
        # message delivered twice); the earlier copies are superseded here, not rejected
        winners = last_versions([document_key(raw) for raw in segment.items])
        kept_items = [i for i, winner in enumerate(winners) if winner == i]
        kept = [segment.items[i] for i in kept_items]
        # a message is complete when the kept version of each of its documents is written
        slot = {item: n for n, item in enumerate(kept_items)}
        needs: dict[int, int] = {}
        for i, winner in enumerate(winners):
            origin = segment.origins[i]
            needs[origin] = max(needs.get(origin, -1), slot[winner])
        superseded = len(segment.items) - len(kept)
        if superseded:
            self._superseded += superseded
            self._pending_counts["superseded"] = self._pending_counts.get("superseded", 0) + superseded
            if self.metrics:
                self.metrics.superseded.inc(superseded)
        for start in range(0, len(kept), self.batch_size):
            if start and self.should_stop():  # warm shutdown: finish the chunk in progress, return the rest
                raise _Stop("shutdown")
            chunk = kept[start : start + self.batch_size]
            report = self._index_isolating(chunk)
            rejected_ids = {r.id for r in report.rejected if r.id}
            indexed_ids = [k for raw in chunk if (k := document_key(raw)) is not None and k not in rejected_ids]
            counts = {"indexed": report.indexed, "rejected": len(report.rejected)}
            self._retrying("recording", functools.partial(self._record, report.rejected, indexed_ids, counts))
            if self.metrics:
                self.metrics.observe_report(report)
            self._totals = self._totals.merge(report)
            written = start + len(chunk)
            self._done.update(p for p, n in needs.items() if n < written)
        self._done.update(segment.origins)  # messages with no documents left (all superseded)

    def _index_isolating(self, chunk: list[Any]) -> IngestReport:
        """Index a chunk; an unexpected error splits it until the document that causes it is found."""
        try:
            return self._retrying("indexing", lambda: self.index_batch(chunk))
        except _Stop:
            raise
        except Exception as e:
            if len(chunk) == 1:
                log.warning("document %r failed alone: %s: %s", document_key(chunk[0]), type(e).__name__, e)
                return IngestReport(
                    rejected=[
                        Rejection(
                            id=document_key(chunk[0]),
                            code="internal_error",
                            reason=f"{type(e).__name__}: {e}"[:2000],
                            stage=_stage_of(e),
                            document=Rejection.keepable(chunk[0]),
                        )
                    ]
                )
            log.warning("a chunk of %d documents failed (%s: %s); splitting it", len(chunk), type(e).__name__, e)
            middle = len(chunk) // 2
            return self._index_isolating(chunk[:middle]).merge(self._index_isolating(chunk[middle:]))

    def _record(self, rejections: Sequence[Rejection], indexed_ids: Sequence[str], counts: Mapping[str, int]) -> None:
        merged = dict(counts)
        for name, value in self._pending_counts.items():
            merged[name] = merged.get(name, 0) + value
        self.record(rejections, indexed_ids=indexed_ids, counts=merged)
        self._pending_counts = {}

    def _flush_counts(self) -> None:
        if not any(self._pending_counts.values()):
            return
        try:
            self._record([], [], {})
        except Exception:
            log.warning("could not update the counters %s", self._pending_counts, exc_info=True)

    # -- retries --------------------------------------------------------------------------
    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of base * 2^(attempt-1), capped."""
        ceiling = min(self.worker.retry_max_s, self.worker.retry_base_s * 2 ** max(0, attempt - 1))
        return ceiling * (0.5 + random.random() / 2)

    def _retrying(self, action: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn``; retry retryable errors with backoff until it works, the budget runs out or a shutdown."""
        while True:
            try:
                result = fn()
            except RETRYABLE as e:
                now = self.clock()
                if self._failing_since is None:
                    self._failing_since = now
                self._attempt += 1
                delay = self.backoff(self._attempt)
                waited = now - self._failing_since
                if self._waited and waited + delay > self.worker.retry_in_process_s:
                    log.warning("%s: still failing after %.0fs in this worker (%s)", action, waited, e)
                    raise _Stop("retries") from e
                level = logging.ERROR if isinstance(e, ConfigurationError) else logging.WARNING
                log.log(
                    level, "%s failed (%s: %s); retry %d in %.1fs", action, type(e).__name__, e, self._attempt, delay
                )
                self._pending_counts["retries"] = self._pending_counts.get("retries", 0) + 1
                if self.metrics:
                    self.metrics.retries.labels(reason=type(e).__name__).inc()
                self._sleep(delay)
                self._waited = True
                continue
            self._failing_since = None
            return result

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps, so that a shutdown request ends the wait."""
        left = seconds
        while left > 0:
            if self.should_stop():
                raise _Stop("shutdown")
            step = min(0.2, left)
            self.sleep(step)
            left -= step

    def _stop(
        self, number: int, stop: _Stop, messages: Sequence[Mapping[str, Any]], positions: list[int]
    ) -> dict[str, list[int]]:
        if stop.why == "retries":
            again = [{**messages[p], "attempt": max(_attempt_of(messages[p]), self._attempt)} for p in positions]
            try:
                self.republish(again)
            except Exception:
                log.exception("batch %d: could not re-publish; returning %d messages instead", number, len(positions))
            else:
                log.warning(
                    "batch %d: the engine is still unavailable; re-published %d messages (attempt %d)",
                    number,
                    len(positions),
                    self._attempt,
                )
                self._pending_counts["republished"] = self._pending_counts.get("republished", 0) + len(positions)
                if self.metrics:
                    self.metrics.republished.inc(len(positions))
                return {"requeue": []}
        else:
            log.warning("batch %d: shutdown requested; returning %d messages to the broker", number, len(positions))
        self._pending_counts["returned"] = self._pending_counts.get("returned", 0) + len(positions)
        if self.metrics:
            self.metrics.returned.inc(len(positions))
        return {"requeue": positions}


def _classify(message: Any) -> tuple[Literal["upsert", "delete"] | None, list[Any], list[Rejection]]:
    """(op, documents or ids, rejections when the message is not understood)."""
    op = message.get("op", "upsert") if isinstance(message, Mapping) else None
    if op == "upsert":
        docs = message.get("documents")
        if not isinstance(docs, list):
            return None, [], [_bad_message(message, "an upsert message needs 'documents': a list of documents")]
        if len(docs) > L.MAX_DOCUMENTS_PER_MESSAGE:
            reason = (
                f"the message carried {len(docs)} documents, over MAX_DOCUMENTS_PER_MESSAGE="
                f"{L.MAX_DOCUMENTS_PER_MESSAGE}; a replay re-sends it in parts"
            )
            return (
                None,
                [],
                [
                    Rejection(
                        id=document_key(raw),
                        code="message_too_large",
                        reason=reason,
                        stage="validate",
                        document=Rejection.keepable(raw),
                    )
                    for raw in docs
                ],
            )
        return "upsert", docs, []
    if op == "delete":
        ids = message.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            return None, [], [_bad_message(message, "a delete message needs 'ids': a list of document ids")]
        return "delete", ids, []
    return None, [], [_bad_message(message, f"unknown op {op!r}: use 'upsert' or 'delete'")]


def _attempt_of(message: Mapping[str, Any]) -> int:
    value = message.get("attempt", 0) if isinstance(message, Mapping) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _bad_message(message: Any, reason: str) -> Rejection:
    return Rejection(
        id=None,
        code="bad_message",
        reason=f"message not understood: {reason}",
        stage="validate",
        document=Rejection.keepable(dict(message)) if isinstance(message, Mapping) else None,
    )
