"""The steps of ``clipfuse reindex --queue`` run by hand, in one process, on real engines and a real Redis
(no Celery): the messages a step sends are collected and run one by one, as a worker would, with
redeliveries, a stale job's message and writes between the steps.

The old index is built with ``toy-a`` (``test_reindex.ToyEmbedder``), the new one with the shipped demo
model; the real-process run with a worker and a producer is ``test_reindex_queue.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest_queue import REDIS_URL, require_broker
from test_reindex import EMBEDDERS, MODEL_A, _contents, _docs

from clipfuse.images import ImageLoader
from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin.protocol import Backend, physical_name
from clipfuse.plugin.qdrant import QdrantBackend
from clipfuse.reindex import AliasWriter
from clipfuse.reindex.queue import QueueReindexer, ReindexSpec, ReindexStatus, step_message
from clipfuse.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def status() -> Iterator[ReindexStatus]:
    import redis

    require_broker("redis")
    store = ReindexStatus(redis.Redis.from_url(REDIS_URL), f"steps-{uuid.uuid4().hex[:8]}")
    yield store
    store.client.delete(store.key)
    store.close()


def _setup(tmp_path: Path, demo_catalog: Path, demo_embedder: Any, status: ReindexStatus) -> Any:
    from qdrant_client import QdrantClient

    alias = status.key.split(":")[1]
    base = demo_catalog.parent
    embedders: dict[str, Any] = {**EMBEDDERS, demo_embedder.model_id: demo_embedder}

    def indexer_for(backend: Backend, model_id: str | None) -> Indexer:
        return Indexer(embedders[model_id or "toy-a"], backend, loader=ImageLoader(base_dir=base), batch_size=8)

    root = QdrantBackend(QdrantClient(path=str(tmp_path / "q")), alias)
    writer = AliasWriter(root, alias, indexer_for=indexer_for, default_model="toy-a", ttl_s=3600)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    settings = settings.model_copy(
        update={"index": alias, "batch_size": 8, "model": settings.model.model_copy(update={"device": "cpu"})}
    )
    sent: list[dict[str, Any]] = []
    steps = QueueReindexer(settings, writer, embedders=embedders, publish=sent.append, status=status)
    return alias, root, writer, steps, sent


def _run_all(steps: QueueReindexer, sent: list[dict[str, Any]]) -> None:
    while sent:
        steps.step(sent.pop(0))


def test_a_queued_reindex_that_cannot_swap_is_refused_and_a_new_job_resumes_it(
    tmp_path: Path, demo_catalog: Path, demo_embedder: Any, status: ReindexStatus
) -> None:
    import base64

    alias, root, writer, steps, sent = _setup(tmp_path, demo_catalog, demo_embedder, status)
    docs = _docs(demo_catalog)[:10]
    image = (demo_catalog.parent / docs[0]["images"][0]["path"]).read_bytes()
    inline = {"id": "inline-1", "title": "an inline photo", "images": [{"data": base64.b64encode(image).decode()}]}
    writer.index([*docs, inline])

    first = ReindexSpec(job="job-1", model="clipfuse-demo", page_size=4, images_root=str(demo_catalog.parent))
    status.start(first)
    sent.append(step_message(first, "prepare", 0))
    _run_all(steps, sent)
    refused = status.read()
    assert refused["state"] == "refused" and "1 missing" in refused["error"], refused
    assert [(r["id"], r["code"]) for r in refused["rejected"]] == [("inline-1", "image_not_kept")]
    assert root.read_alias(alias).target == physical_name(alias, "toy-a")  # type: ignore[union-attr]

    writer.index_batch([{**inline, "images": docs[0]["images"]}])  # sent again by path: both indexes
    second = ReindexSpec(job="job-2", model="clipfuse-demo", page_size=4, images_root=str(demo_catalog.parent))
    status.start(second)
    sent.append(step_message(second, "prepare", 0))
    _run_all(steps, sent)
    done = status.read()
    assert done["state"] == "swapped" and done["copied"] == 0 and done["skipped"] == 11, done  # resumed
    assert "resume" in done["plan"][0]
    steps.close()
    writer.close()


def test_queued_steps_resume_drop_repeats_and_stale_jobs_and_swap(
    tmp_path: Path, demo_catalog: Path, demo_embedder: Any, status: ReindexStatus
) -> None:
    alias, root, writer, steps, sent = _setup(tmp_path, demo_catalog, demo_embedder, status)
    base = demo_catalog.parent
    docs = _docs(demo_catalog)[:30]
    writer.index(docs[:25])
    assert steps.embedders[MODEL_A.model_id] is MODEL_A

    spec = ReindexSpec(job="job-2", model="clipfuse-demo", page_size=8, images_root=str(base))
    status.start(spec)
    steps.step(step_message(ReindexSpec(job="job-1", model="clipfuse-demo"), "prepare", 0))  # an older job
    assert not sent and status.read()["state"] == "queued"

    steps.step(step_message(spec, "prepare", 0))
    new_name = physical_name(alias, demo_embedder.model_id)
    assert status.read()["state"] == "running" and status.read()["total"] == 25
    # the worker's writer saw the prepare at once (its alias view is otherwise cached for an hour)
    assert [name for name, _ in writer.live()] == [physical_name(alias, "toy-a"), new_name]
    prepare_again = step_message(spec, "prepare", 0)
    steps.step(prepare_again)  # redelivered: done already, dropped
    assert [m["step"] for m in sent] == ["copy"]

    pages = 0
    while sent:
        message = sent.pop(0)
        steps.step(message)
        if message["step"] == "copy":
            pages += 1
            if pages == 1:  # writes between the steps reach both indexes
                writer.index_batch([{**docs[0], "title": "updated between two pages"}, docs[25]])
                writer.delete([docs[1]["id"]])
                repeat = len(sent)
                steps.step(message)  # the same page again (a redelivery after a kill): dropped
                assert len(sent) == repeat
    assert pages == 4  # 25 documents in pages of 8
    final = status.read()
    assert final["state"] == "swapped", final
    assert final["record"]["target"] == new_name and final["verify"]["missing"] == 0
    assert final["done"] >= 25 and final["copied"] + final["skipped"] == final["done"]
    assert set(final["timings"]) == {"prepare", "copy", "finish"}

    new, old = _contents(root.open_index(new_name)), _contents(root.open_index(physical_name(alias, "toy-a")))
    assert new == old and len(new) == 25  # 25 + docs[25] - docs[1]
    assert new[docs[0]["id"]]["title"] == "updated between two pages" and docs[1]["id"] not in new
    assert root.open_index(new_name).index_info().model == "clipfuse-demo"  # type: ignore[union-attr]
    steps.step(step_message(spec, "finish", 99))  # after the end: dropped
    assert not sent and status.read()["state"] == "swapped"
    steps.close()
    writer.close()
