"""Guarantee 2: the search engine unavailable, then available -- retried with backoff, nothing rejected or lost.

Two real outages, with real worker processes:

- the embedded store held by another process (this test) for a while, then released: the worker's
  engine cannot be opened ("already accessed"), which the worker treats as unavailable, retries
  with backoff, re-publishes the batch when its in-process retries run out, and indexes everything
  once the store is free;
- a Qdrant URL where nothing listens (the real qdrant-client, the real broker, the batch loop run
  in-process): retried with backoff, then every message re-published whole with its attempt count,
  nothing dead-lettered.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from clipfuse.workers.producer import enqueue

pytest_plugins = ["conftest_queue"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_RETRIES = {
    "CLIPFUSE_WORKER__RETRY_BASE_S": "0.5",
    "CLIPFUSE_WORKER__RETRY_MAX_S": "2",
    "CLIPFUSE_WORKER__RETRY_IN_PROCESS_S": "3",
}


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_engine_unavailable_then_available_is_retried_not_rejected(
    queue_env_factory: Any, queue_catalog: list[dict[str, Any]]
) -> None:
    from conftest_queue import free_port
    from qdrant_client import QdrantClient

    env = queue_env_factory("redis", embedded=True)
    docs = queue_catalog[:40]
    env.store.mkdir(parents=True)
    holder = QdrantClient(path=str(env.store))  # the outage: this process holds the store
    try:
        port = free_port()
        worker = env.start_worker(CLIPFUSE_WORKER__METRICS_PORT=port, **FAST_RETRIES)
        assert enqueue(docs, settings=env.settings(), app=env.app(), chunk_size=5).accepted == 40
        worker.wait_ready()
        worker.wait_for(r"retry \d+ in", count=3, timeout=60)
        worker.wait_for(r"re-published \d+ messages", timeout=60)
        retries_metric = _metric(port, "clipfuse_retries_total")
    finally:
        holder.close()
    released_at = time.monotonic()
    drained_at = env.wait_drained(worker, documents=40, timeout=90)
    stats = env.stats()
    dead = env.dead_letters()
    dead_count = dead.count()
    dead.close()
    worker.stop()

    count, ids = env.stored_ids()
    assert count == 40 and set(ids) == {d["id"] for d in docs}
    assert dead_count == 0 and stats["rejected"] == 0, "an outage must never turn into rejections"
    assert stats["retries"] >= 3 and stats["republished"] >= 1
    assert retries_metric >= 3
    print(
        f"\n[redis] store held by another process: {stats['retries']} retries "
        f"(Prometheus clipfuse_retries_total={retries_metric:.0f}), {stats['republished']} messages re-published, "
        f"0 rejected; all {count} indexed {drained_at - released_at:.1f}s after the store was released"
    )


def test_qdrant_url_refusing_connections_is_retried_and_republished_not_rejected(
    queue_env_factory: Any, queue_catalog: list[dict[str, Any]]
) -> None:
    """The real qdrant-client against a URL where nothing listens, the real broker, the batch loop in-process."""

    from conftest_queue import free_port

    from clipfuse.factory import build_indexer
    from clipfuse.workers.batches import BatchProcessor

    env = queue_env_factory("redis", embedded=True)
    docs = queue_catalog[40:60]
    settings = env.settings(retry_base_s=0.05, retry_max_s=0.2, retry_in_process_s=0.5)
    settings = settings.model_copy(
        update={"qdrant": settings.qdrant.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})}
    )
    indexer = build_indexer(settings, embedder=_NoModel())
    app = env.app()
    store = env.dead_letters()

    def republish(messages: Any) -> None:
        for kwargs in messages:
            app.send_task("clipfuse.ingest", kwargs=dict(kwargs), queue=env.queue)

    processor = BatchProcessor(
        index_batch=indexer.index_batch,
        delete=indexer.delete,
        record=store.record,
        republish=republish,
        worker=settings.worker,
        batch_size=10,
    )
    messages = [{"op": "upsert", "documents": docs[i : i + 5], "attempt": 0} for i in range(0, 20, 5)]
    try:
        outcome = processor.process(messages)
        stats = store.stats()
        dead = store.count()
    finally:
        store.close()
        indexer.backend.close()
    assert outcome == {"requeue": []}  # acknowledged, because ...
    again = env.take_messages()  # ... every message is back on the queue, whole, with its attempt count
    assert [m["documents"] for m in again] == [m["documents"] for m in messages]
    assert all(m["attempt"] >= 2 for m in again)
    assert dead == 0 and stats["rejected"] == 0 and stats["indexed"] == 0
    assert stats["retries"] >= 2 and stats["republished"] == 4
    print(
        f"\n[redis] Qdrant URL refusing connections: {stats['retries']} retries with backoff, then the 4 messages "
        f"(20 documents) re-published with attempt {again[0]['attempt']}; 0 rejected, 0 lost"
    )


class _NoModel:
    """An embedder that is never reached: the engine fails first."""

    dim = 128
    model_id = "unused"

    def embed_images(self, images: Any) -> Any:
        raise AssertionError("not reached")

    def embed_texts(self, texts: Any) -> Any:
        raise AssertionError("not reached")
