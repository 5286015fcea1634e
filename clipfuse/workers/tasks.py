"""The Celery task (thin) and what a worker process holds.

One task, ``clipfuse.ingest``, carries both kinds of message, so that an upsert
and a later delete of the same id are applied in the order they were sent::

    {"op": "upsert", "documents": [{...}, ...], "attempt": 0}
    {"op": "delete", "ids": ["p1", "p2"], "attempt": 0}

The task hands its batch of messages to :class:`~clipfuse.workers.batches.BatchProcessor`
(batching, acknowledgement, retries: :mod:`clipfuse.workers.batches`), which writes through
this process's :class:`WorkerRuntime`: the model, loaded once, and the engine behind the alias.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celery import signals
from celery_batches import SimpleRequest

from clipfuse.embedding import build_embedder
from clipfuse.errors import BackendUnavailable, StoreLocked
from clipfuse.factory import build_backend, build_writer
from clipfuse.settings import Settings
from clipfuse.workers.batches import BatchProcessor, ClipfuseBatches
from clipfuse.workers.broker import INGEST_TASK
from clipfuse.workers.deadletters import DeadLetters
from clipfuse.workers.metrics import get_metrics, serve_metrics

if TYPE_CHECKING:
    from celery import Celery

    from clipfuse.reindex.writer import AliasWriter

__all__ = ["WorkerRuntime", "get_runtime", "register_tasks"]

log = logging.getLogger(__name__)


def register_tasks(app: Celery, settings: Settings) -> None:
    """Register ``clipfuse.ingest`` on ``app`` and the worker's start / stop hooks."""

    @app.task(
        base=ClipfuseBatches,
        name=INGEST_TASK,
        flush_every=settings.worker.batch_messages,
        flush_interval=settings.worker.flush_interval_s,
        acks_late=True,
    )
    def ingest(requests: list[SimpleRequest]) -> dict[str, list[int]]:
        messages = [_message_of(r) for r in requests]
        return get_runtime(app, settings).processor.process(messages)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        pool = str(getattr(sender, "pool_cls", ""))
        if "solo" not in pool and "thread" not in pool:
            log.error(
                "clipfuse workers run with --pool solo (one process per GPU); with %s a killed pool child "
                "leaves its batch's messages unacknowledged until the worker restarts",
                pool,
            )

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        runtime = get_runtime(app, settings)
        serve_metrics(settings.worker.metrics_port)
        try:
            runtime.warm_up()
        except Exception:
            log.critical("cannot load the model; stopping the worker", exc_info=True)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        runtime = _runtimes.get((os.getpid(), id(app)))
        if runtime is not None:
            runtime.close()

    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False)


def _message_of(request: SimpleRequest) -> dict[str, Any]:
    """The message's keyword arguments (anything else is dead-lettered as a bad message)."""
    kwargs, args = request.kwargs, request.args
    if isinstance(kwargs, Mapping) and kwargs:
        return dict(kwargs)
    if isinstance(args, (list, tuple)) and len(args) == 1 and isinstance(args[0], list):
        return {"op": "upsert", "documents": args[0]}
    return {"op": None, "args": args if isinstance(args, (list, tuple)) else None}


def _shutdown_requested() -> bool:
    from celery.worker import state

    return any(v is not None and v is not False for v in (state.should_stop, state.should_terminate))


# -- the process's model, engine and stores --------------------------------------------------
_runtimes: dict[tuple[int, int], WorkerRuntime] = {}
_runtimes_lock = threading.Lock()


def get_runtime(app: Celery, settings: Settings) -> WorkerRuntime:
    """This process's runtime for ``app``, built from ``settings`` the first time (the model loads once
    per process)."""
    key = (os.getpid(), id(app))
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = WorkerRuntime(app, settings)
        return runtime


class WorkerRuntime:
    """What one worker process holds: the model, the engine client, the dead-letter store, metrics."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._embedder: Any = None
        self._indexer: AliasWriter | None = None
        #: every model this process loaded, by id (the configured one, and a re-index's)
        self.embedders: dict[str, Any] = {}
        self._reindexer: Any = None
        self.dead = DeadLetters.from_settings(settings)
        self.metrics = get_metrics()
        self.processor = BatchProcessor(
            index_batch=lambda docs: self.indexer().index_batch(docs),
            delete=lambda ids: self.indexer().delete(ids),
            record=self.dead.record,
            republish=self.republish,
            should_stop=_shutdown_requested,
            worker=settings.worker,
            batch_size=settings.batch_size,
            metrics=self.metrics,
            steps={"reindex": lambda message: self.reindexer().step(message)},
        )

    def embedder(self) -> Any:
        if self._embedder is None:
            self._embedder = build_embedder(self.settings.model)
        return self._embedder

    def warm_up(self) -> None:
        """Load the model now rather than in the first batch (the engine opens lazily)."""
        embedder = self.embedder()
        load = getattr(embedder, "load", None)
        if callable(load):
            load()
        log.info("model %s loaded (dim %d)", getattr(embedder, "model_id", "?"), embedder.dim)

    def indexer(self) -> AliasWriter:
        """Writes through the alias: to its target and, during a re-index or until a prune, to the other
        live index too, each with its own model (models load once per process and stay)."""
        if self._indexer is None:
            try:
                backend = build_backend(self.settings)
            except StoreLocked as e:  # another process has the embedded store open: wait for it
                raise BackendUnavailable(str(e)) from e
            embedder = self.embedder()
            self.embedders.setdefault(embedder.model_id, embedder)
            self._indexer = build_writer(self.settings, root=backend, embedders=self.embedders)
        return self._indexer

    def reindexer(self) -> Any:
        """Runs ``clipfuse reindex --queue``'s step messages (:mod:`clipfuse.reindex.queue`) on this
        process's engine client and models."""
        if self._reindexer is None:
            from clipfuse.reindex.queue import QueueReindexer

            self._reindexer = QueueReindexer(
                self.settings, self.indexer(), embedders=self.embedders, publish=lambda m: self.republish([m])
            )
        return self._reindexer

    def republish(self, messages: Sequence[Mapping[str, Any]]) -> None:
        with self.app.producer_or_acquire() as producer:
            for kwargs in messages:
                self.app.send_task(
                    INGEST_TASK, kwargs=dict(kwargs), queue=self.settings.broker.queue, producer=producer
                )

    def close(self) -> None:
        if self._reindexer is not None:
            self._reindexer.close()
            self._reindexer = None
        if self._indexer is not None:
            try:
                self._indexer.close()
            except Exception:
                log.warning("closing the engine client failed", exc_info=True)
            self._indexer = None
        self.dead.close()
