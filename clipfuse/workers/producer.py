"""Putting documents on the queue: validated first, many per message.

::

    from clipfuse.workers.producer import enqueue, enqueue_delete

    report = enqueue(documents)          # dicts or Documents
    report.accepted, report.refused      # refused: [Rejection(id, code, reason, ...)]
    enqueue_delete(["p1", "p2"])

Every document is validated with :func:`~clipfuse.schemas.parse_document` before
anything is sent: a bad one is refused here, with its reason, and never reaches
a worker. Accepted documents travel in messages of at most
``CLIPFUSE_BROKER__DOCUMENTS_PER_MESSAGE`` documents (never more than
``MAX_DOCUMENTS_PER_MESSAGE``) and ``CLIPFUSE_BROKER__MAX_MESSAGE_BYTES`` of JSON,
inline images and precomputed ``vectors`` included (a 4,096-dimension vector is
about 40-100 KB of JSON); a single document larger than that is refused (send its
images by path or URL). Images travel by reference: a path must be readable by
the workers (relative paths are resolved against ``base_dir`` when given), a URL
is fetched by the worker.

When :func:`enqueue` returns, the accepted documents are in the broker (RabbitMQ
confirms each message; Redis has executed the push). Importing this module does
not import torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import redis
from pydantic import BaseModel, ConfigDict

from clipfuse.errors import ClipfuseError, InvalidDocument
from clipfuse.schemas import Document, Rejection, parse_document
from clipfuse.schemas import limits as L
from clipfuse.settings import Settings
from clipfuse.workers.broker import INGEST_TASK, broker_kind
from clipfuse.workers.deadletters import DeadLetters

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "EnqueueError",
    "EnqueueReport",
    "QueueDepth",
    "enqueue",
    "enqueue_delete",
    "queue_depth",
]

log = logging.getLogger(__name__)


class EnqueueError(ClipfuseError):
    """The broker could not take a message; ``report`` tells what was sent before it failed."""

    def __init__(self, message: str, report: EnqueueReport | None = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.report))


class EnqueueReport(BaseModel):
    """What :func:`enqueue` did."""

    model_config = ConfigDict(extra="forbid")

    #: documents sent to the broker
    accepted: int = 0
    #: messages sent
    messages: int = 0
    #: documents refused before sending (position = index in the input), with their reasons
    refused: list[Rejection] = []
    #: JSON bytes of documents sent
    bytes: int = 0
    seconds: float = 0.0


# -- apps ---------------------------------------------------------------------------------
_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()


def _app_for(settings: Settings | None, app: Celery | None) -> tuple[Celery, Settings]:
    # lazy: Celery loads on first send, and clipfuse.workers.app builds the default app when imported
    from clipfuse.workers.app import create_app, settings_of

    if app is not None:
        return app, settings or settings_of(app)
    if settings is None:
        from clipfuse.workers.app import app as default_app

        return default_app, settings_of(default_app)
    key = settings.model_dump_json(include={"broker", "worker", "index", "batch_size"})
    with _apps_lock:
        if key not in _apps:
            _apps[key] = create_app(settings)
        return _apps[key], settings


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _message_body(doc: Document, base_dir: Path | None) -> dict[str, Any]:
    body = doc.model_dump(mode="json", exclude_none=True)
    if base_dir is not None:
        for image in body.get("images", []):
            path = image.get("path")
            if path is not None and not Path(path).expanduser().is_absolute():
                image["path"] = str((base_dir / path).resolve())
    return body


def _count(settings: Settings, **counts: int) -> None:
    """Best effort: add to the ``status`` counters (a producer must not fail for them)."""
    try:
        store = DeadLetters.from_settings(settings)
        try:
            store.incr(**counts)
        finally:
            store.close()
    except Exception as e:
        log.debug("could not update the status counters: %s", e)


# -- sending ----------------------------------------------------------------------------------
def enqueue(
    documents: Iterable[Document | dict[str, Any] | InvalidDocument],
    *,
    settings: Settings | None = None,
    app: Celery | None = None,
    chunk_size: int | None = None,
    base_dir: str | Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_validate: Callable[[int], None] | None = None,
) -> EnqueueReport:
    """Validate documents and send them to the workers' queue, many per message.

    Two passes: every document is read and validated first (accepted ones are spooled,
    in memory up to 64 MB, then in a temporary file), and only then sent, so nothing
    in the input (a line a reader cannot parse, a document that fails validation, an
    iterable that raises) can leave it half-enqueued.

    Items that are :class:`~clipfuse.errors.InvalidDocument` instances (a reader's
    error for one item, e.g. a line that is not JSON) are reported as refused.
    ``chunk_size``: documents per message (default ``CLIPFUSE_BROKER__DOCUMENTS_PER_MESSAGE``,
    at most ``MAX_DOCUMENTS_PER_MESSAGE``). ``base_dir``: folder that relative image
    paths are relative to (they are sent as absolute paths). ``on_validate(n)`` is
    called as documents are validated (accepted or refused), ``on_progress(n)`` as
    they are sent (and, without ``on_validate``, as they are validated too). Raises
    :class:`EnqueueError` when the broker cannot be reached (its ``report`` says what
    was sent before).
    """
    app, settings = _app_for(settings, app)
    size = min(chunk_size or settings.broker.documents_per_message, L.MAX_DOCUMENTS_PER_MESSAGE)
    if size < 1:
        raise ClipfuseError(f"chunk_size must be at least 1, got {chunk_size}")
    budget = settings.broker.max_message_bytes
    folder = Path(base_dir).expanduser().resolve() if base_dir is not None else None
    report = EnqueueReport()
    started = time.perf_counter()
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES) as spool:
        try:
            # 1. read and validate everything first: nothing is sent until the whole input was read,
            #    so an input that cannot be read to the end leaves nothing half-enqueued
            accepted = _validate_into(
                spool, documents, folder, budget, report, on_validate, None if on_validate else on_progress
            )
            spool.seek(0)
            # 2. send the accepted documents, many per message
            _send_spooled(app, settings, INGEST_TASK, spool, accepted, size, budget, report, started, on_progress)
        finally:
            report.seconds = time.perf_counter() - started
            if report.accepted or report.refused:
                _count(settings, enqueued=report.accepted, refused=len(report.refused))
    return report


#: accepted documents are spooled in memory up to this size, then to a temporary file
_SPOOL_IN_MEMORY_BYTES = 64 * 1024 * 1024


def _validate_into(
    spool: IO[bytes],
    documents: Iterable[Document | dict[str, Any] | InvalidDocument],
    folder: Path | None,
    budget: int,
    report: EnqueueReport,
    on_validate: Callable[[int], None] | None,
    on_refused: Callable[[int], None] | None,
) -> int:
    """Validate every document; write each accepted one's message body to ``spool`` (one JSON line each)."""
    accepted = 0
    for position, raw in enumerate(documents):
        try:
            doc = parse_document(raw)  # raises a reader's own InvalidDocument (a bad JSON line) too
            body = _message_body(doc, folder)
            encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            if len(encoded) > budget:
                vectors = _json_size(body["vectors"]) if "vectors" in body else 0
                raise InvalidDocument(
                    f"document is {len(encoded):,} bytes of JSON"
                    + (f" ({vectors:,} of them precomputed vectors)" if vectors else "")
                    + f", over CLIPFUSE_BROKER__MAX_MESSAGE_BYTES={budget:,}; send its images by "
                    "path or URL instead of inline data",
                    doc_id=doc.id,
                    code="message_too_large",
                )
        except InvalidDocument as e:
            report.refused.append(
                Rejection(
                    id=e.doc_id,
                    code=e.code,
                    reason=e.message,
                    stage="validate",
                    position=position,
                    document=Rejection.keepable(raw.model_dump(mode="json") if isinstance(raw, Document) else raw),
                )
            )
            for callback in (on_validate, on_refused):
                if callback:
                    callback(1)
            continue
        spool.write(encoded + b"\n")
        accepted += 1
        if on_validate:
            on_validate(1)
    return accepted


def _send_spooled(
    app: Celery,
    settings: Settings,
    task: str,
    spool: IO[bytes],
    accepted: int,
    size: int,
    budget: int,
    report: EnqueueReport,
    started: float,
    on_progress: Callable[[int], None] | None,
) -> None:
    if not accepted:
        return
    pending: list[dict[str, Any]] = []
    pending_bytes = 0

    def send(producer: Any) -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        try:
            app.send_task(
                task,
                kwargs={"op": "upsert", "documents": pending, "attempt": 0},
                queue=settings.broker.queue,
                producer=producer,
            )
        except Exception as e:
            report.seconds = time.perf_counter() - started
            raise EnqueueError(
                f"the broker did not take a message of {len(pending)} documents ({type(e).__name__}: {e}); "
                f"{report.accepted} documents were sent before; is {_safe_url(settings.broker.url)} up?",
                report,
            ) from e
        report.accepted += len(pending)
        report.messages += 1
        report.bytes += pending_bytes
        if on_progress:
            on_progress(len(pending))
        pending, pending_bytes = [], 0

    with app.producer_or_acquire() as producer:
        for line in spool:
            nbytes = len(line) - 1
            if pending and (len(pending) >= size or pending_bytes + nbytes > budget):
                send(producer)
            pending.append(json.loads(line))
            pending_bytes += nbytes
        send(producer)


def enqueue_delete(
    ids: Sequence[str],
    *,
    settings: Settings | None = None,
    app: Celery | None = None,
    chunk_size: int = L.MAX_DOCUMENTS_PER_MESSAGE,
) -> EnqueueReport:
    """Queue deletions by document id; they are applied in order with the upserts sent before them."""
    app, settings = _app_for(settings, app)
    size = max(1, min(chunk_size, L.MAX_DOCUMENTS_PER_MESSAGE))
    report = EnqueueReport()
    started = time.perf_counter()
    valid: list[str] = []
    for position, doc_id in enumerate(ids):
        if not isinstance(doc_id, str) or not doc_id or len(doc_id) > L.MAX_ID_CHARS:
            report.refused.append(
                Rejection(
                    id=doc_id if isinstance(doc_id, str) else None,
                    code="validation",
                    reason=f"a document id is a non-empty string of at most MAX_ID_CHARS={L.MAX_ID_CHARS} characters",
                    stage="validate",
                    position=position,
                )
            )
        else:
            valid.append(doc_id)
    with app.producer_or_acquire() as producer:
        for start in range(0, len(valid), size):
            part = valid[start : start + size]
            try:
                app.send_task(
                    INGEST_TASK,
                    kwargs={"op": "delete", "ids": part, "attempt": 0},
                    queue=settings.broker.queue,
                    producer=producer,
                )
            except Exception as e:
                raise EnqueueError(f"the broker did not take a delete message: {type(e).__name__}: {e}", report) from e
            report.accepted += len(part)
            report.messages += 1
    report.seconds = time.perf_counter() - started
    return report


# -- queue depth ------------------------------------------------------------------------------
class QueueDepth(BaseModel):
    """Messages waiting in the queue, and (Redis) taken by a worker but not yet acknowledged."""

    queue: str
    broker: str
    #: messages waiting to be delivered
    pending: int
    #: delivered, not yet acknowledged (Redis only; None where the broker does not say)
    in_flight: int | None = None
    #: consumers attached (RabbitMQ only)
    consumers: int | None = None


def _safe_url(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def queue_depth(settings: Settings | None = None, app: Celery | None = None) -> QueueDepth:
    """How many messages wait in the queue (Redis and RabbitMQ)."""
    app, settings = _app_for(settings, app)
    queue = settings.broker.queue
    url = settings.broker.url
    if broker_kind(url) == "redis":
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        try:
            return QueueDepth(
                queue=queue,
                broker=_safe_url(url),
                pending=redis_pending(client, queue),
                in_flight=redis_in_flight(client, queue),
            )
        finally:
            client.close()
    with app.connection_for_read() as connection:
        channel = connection.channel()
        try:
            _, pending, consumers = channel.queue_declare(queue=queue, passive=True)
        except Exception as e:  # NOT_FOUND: no worker or producer declared it yet
            if "NOT_FOUND" in str(e) or "404" in str(e):
                return QueueDepth(queue=queue, broker=_safe_url(url), pending=0, consumers=0)
            raise
        finally:
            with contextlib.suppress(Exception):
                channel.close()
    return QueueDepth(queue=queue, broker=_safe_url(url), pending=int(pending), consumers=int(consumers))


#: kombu's Redis transport keeps one list per priority step: ``queue`` and ``queue\x06\x16<n>``
_REDIS_PRIORITY_SEP = "\x06\x16"
_REDIS_PRIORITY_STEPS = (0, 3, 6, 9)


def redis_queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{_REDIS_PRIORITY_SEP}{step}" for step in _REDIS_PRIORITY_STEPS]


def redis_pending(client: Any, queue: str) -> int:
    pipe = client.pipeline(transaction=False)
    for key in redis_queue_keys(queue):
        pipe.llen(key)
    return int(sum(pipe.execute()))


def redis_in_flight(client: Any, queue: str, unacked_key: str = "unacked") -> int:
    """Messages of ``queue`` delivered to a worker and not acknowledged (kombu's ``unacked`` hash)."""
    count = 0
    for _, value in client.hscan_iter(unacked_key):
        try:
            _, _, routing_key = json.loads(value)
        except (ValueError, TypeError):
            continue
        if routing_key == queue:
            count += 1
    return count
