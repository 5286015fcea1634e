"""`clipfuse reindex --queue` with a real Celery worker (Redis) and a producer sending updates and deletes
throughout: to a second checkpoint and back, then the index checked id by id.

The store is qdrant-client's local mode, which one process at a time may open: the worker holds
it, so the re-index runs in the worker (``--queue``: its steps are messages of the same queue as the
updates) and the command only waits on the job's status in Redis. The test reads the store after
the worker stopped.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from clipfuse.workers.producer import enqueue, enqueue_delete

pytest_plugins = ["conftest_queue"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


#: the environment of every process (worker, command) per embedded engine, besides conftest_queue's
ENGINES: dict[str, dict[str, str]] = {"qdrant-local": {}, "qdrant-edge": {"CLIPFUSE_BACKEND": "qdrant-edge"}}


def _engine_env(env: Any, engine: str) -> dict[str, str]:
    extra = dict(ENGINES[engine])
    if engine == "qdrant-edge":
        extra["CLIPFUSE_EDGE__PATH"] = str(env.store)
    return extra


def _clipfuse(
    env: Any, *args: str, timeout: float = 600, engine: str = "qdrant-local"
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "clipfuse.cli", *args],
        env={**env.env(**_engine_env(env, engine)), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"clipfuse {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


class Producer(threading.Thread):
    """Sends updates (a new title and version each time) and deletes of the catalog's documents, one
    message at a time, until stopped; remembers what the index must hold at the end."""

    def __init__(self, env: Any, docs: list[dict[str, Any]], seed: int = 7) -> None:
        super().__init__(daemon=True)
        self.env, self.docs = env, {d["id"]: d for d in docs}
        self.expected: dict[str, dict[str, Any] | None] = {d["id"]: d for d in docs}  # None: deleted
        self.sent: list[tuple[float, str, str]] = []  # (time, op, id)
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.random = random.Random(seed)

    def run(self) -> None:
        settings, app = self.env.settings(), self.env.app()
        version = 0
        try:
            while not self.stop_event.is_set():
                doc_id = self.random.choice(sorted(self.docs))
                if self.random.random() < 0.25 and self.expected[doc_id] is not None:
                    enqueue_delete([doc_id], settings=settings, app=app)
                    self.expected[doc_id] = None
                    self.sent.append((time.monotonic(), "delete", doc_id))
                else:
                    version += 1
                    doc = {
                        **self.docs[doc_id],
                        "title": f"{self.docs[doc_id]['title']} (update {version})",
                        "attributes": {**self.docs[doc_id].get("attributes", {}), "version": version},
                    }
                    report = enqueue([doc], settings=settings, app=app)
                    assert report.accepted == 1, report
                    self.expected[doc_id] = doc
                    self.sent.append((time.monotonic(), "upsert", doc_id))
                time.sleep(0.15)
        except BaseException as e:
            self.errors.append(e)

    def during(self, start: float, end: float) -> dict[str, int]:
        ops = [op for t, op, _ in self.sent if start <= t <= end]
        return {"upsert": ops.count("upsert"), "delete": ops.count("delete")}


def _index_contents(
    store: Path, alias: str, engine: str = "qdrant-local"
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(alias record, {physical index: {doc id: payload}}) of every index behind ``alias``."""
    from clipfuse.plugin.protocol import Aliased

    if engine == "qdrant-edge":
        from clipfuse.plugin.edge import EdgeBackend

        root: Any = EdgeBackend(store, alias)
    else:
        from qdrant_client import QdrantClient

        from clipfuse.plugin.qdrant import QdrantBackend

        root = QdrantBackend(QdrantClient(path=str(store)), alias)
    assert isinstance(root, Aliased)
    try:
        record = root.read_alias(alias)
        assert record is not None
        out: dict[str, dict[str, Any]] = {}
        for name in (record.target, record.previous):
            if not name:
                continue
            backend = root.open_index(name)
            docs: dict[str, Any] = {}
            offset: Any = None
            while True:
                page, offset = backend.scroll_payloads(offset, 256)
                docs.update(page)
                if offset is None or not page:
                    break
            info = backend.index_info()
            out[name] = {"model": info.model if info else None, "docs": docs}
            if backend is not root:
                backend.close()
        return record.to_json(), out
    finally:
        root.close()


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_reindex_through_the_queue_and_back_while_a_producer_updates_and_deletes(
    tmp_path: Path, queue_env_factory: Any, weak_model: Path, engine: str
) -> None:
    from clipfuse.eval.cli import _demo_inputs

    env = queue_env_factory("redis", embedded=True)
    catalog, _, _ = _demo_inputs(tmp_path / "demo", size=120, n_queries=40, text_noise=0.5, seed=0)
    queries, qrels = tmp_path / "demo" / "queries.jsonl", tmp_path / "demo" / "qrels.tsv"
    docs = [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]
    for doc in docs:  # sent with absolute image paths, as a shop's producer would
        for image in doc["images"]:
            image["path"] = str(catalog.parent / image["path"])

    worker = env.start_worker(**_engine_env(env, engine))
    worker.wait_ready()
    assert enqueue(docs, settings=env.settings(), app=env.app(), chunk_size=10).accepted == 120
    env.wait_drained(worker, documents=120, timeout=180)

    producer = Producer(env, docs)
    producer.start()
    time.sleep(2)
    gate = ["--gate", str(queries), str(qrels), "--page-size", "16", "--timeout", "500"]

    # 1. to the weak checkpoint, through the worker (forced past the gate, whose table it prints)
    started = time.monotonic()
    there = _clipfuse(
        env, "reindex", "--queue", "--model", f"local-dir:{weak_model}", *gate, "--tolerance", "1", engine=engine
    )
    first = (started, time.monotonic())
    assert "evaluation gate" in there.stdout and "RRF k=60 <- gate" in there.stdout, there.stdout
    assert "swapped" in there.stdout, there.stdout

    # 2. prune the demo index (the worker holds the store: stopped for it; the producer goes on, the
    #    queue keeps what it sends), then back to the demo model, gated
    worker.stop()
    _clipfuse(env, "alias", "prune", engine=engine)
    worker = env.start_worker(**_engine_env(env, engine))
    worker.wait_ready()
    started = time.monotonic()
    back = _clipfuse(env, "reindex", "--queue", "--model", "clipfuse-demo", *gate, engine=engine)
    second = (started, time.monotonic())
    assert "gate passed" in back.stdout and "swapped" in back.stdout, back.stdout

    time.sleep(2)
    producer.stop_event.set()
    producer.join(timeout=30)
    assert not producer.errors, producer.errors
    sent = len(producer.sent)
    env.wait_drained(worker, documents=120 + sum(1 for _, op, _ in producer.sent if op == "upsert"), timeout=180)
    worker.stop()
    log = worker.log()
    assert "Traceback" not in log, worker.tail(80)

    record, indexes = _index_contents(env.store, env.index, engine)
    assert indexes[record["target"]]["model"] == "clipfuse-demo"
    assert indexes[record["previous"]]["model"] == f"local-dir:{weak_model}"
    expected = {doc_id: doc for doc_id, doc in producer.expected.items() if doc is not None}
    deleted = {doc_id for doc_id, doc in producer.expected.items() if doc is None}
    for name, index in indexes.items():  # the new target and the previous one, kept up to date
        held = index["docs"]
        assert not deleted & set(held), f"{name} holds deleted ids {sorted(deleted & set(held))[:5]}"
        assert set(held) == set(expected), f"{name}: missing {sorted(set(expected) - set(held))[:5]}"
        for doc_id, doc in expected.items():  # id by id: the last version sent
            assert held[doc_id]["title"] == doc["title"], (name, doc_id, held[doc_id]["title"], doc["title"])
            assert held[doc_id].get("version") == doc.get("attributes", {}).get("version"), (name, doc_id)
    during = producer.during(*first), producer.during(*second)
    assert all(d["upsert"] and d["delete"] for d in during), during
    print(
        f"\n[queue re-index, {engine}] producer sent {sent} messages ({sum(1 for _, op, _ in producer.sent if op == 'delete')} "
        f"deletes); during the re-index to the weak model: {during[0]} in {first[1] - first[0]:.1f}s, back: "
        f"{during[1]} in {second[1] - second[0]:.1f}s; final: {len(expected)} documents, {len(deleted)} deleted, "
        "every id's last version in both indexes"
    )
    print(there.stdout, there.stderr[-3000:], back.stdout, sep="\n")


def test_worker_killed_during_a_queued_reindex_then_restarted_finishes_it(
    queue_env_factory: Any, queue_catalog: list[dict[str, Any]], weak_model: Path
) -> None:
    """SIGKILL of the worker in the middle of the copy: the command keeps waiting, the restarted worker
    gets the unacknowledged step again, and the re-index finishes with every document, id by id;
    meanwhile the alias never left the old index."""
    import re
    import signal

    env = queue_env_factory("redis", embedded=True)
    worker = env.start_worker()
    worker.wait_ready()
    assert enqueue(queue_catalog, settings=env.settings(), app=env.app(), chunk_size=10).accepted == 120
    env.wait_drained(worker, documents=120, timeout=180)

    args = ["reindex", "--queue", "--model", f"local-dir:{weak_model}", "--page-size", "8", "--timeout", "400"]
    command = subprocess.Popen(
        [sys.executable, "-m", "clipfuse.cli", *args],
        env={**env.env(), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        found = worker.wait_for(r"re-index: (\d+) of 120 documents done", count=5, timeout=240, poll=0.01)
        worker.signal(signal.SIGKILL)
        worker.wait_exit(10)
        done_at_kill = int(found.group(1))
        assert done_at_kill < 120, "the copy ended before the kill"
        record, indexes = _index_contents(env.store, env.index)
        assert record["building"] and record["target"] != record["building"]  # nothing swapped yet
        old = record["target"]

        restarted = env.start_worker()
        restarted.wait_ready()
        stdout, stderr = command.communicate(timeout=400)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 0, stdout + stderr
    assert "swapped" in stdout and "re-embedded" in stdout, stdout
    restarted.stop()
    resumed = [int(m) for m in re.findall(r"re-index: (\d+) of 120 documents done", restarted.log())]
    assert resumed and min(resumed) > 8, resumed  # the restarted worker went on from a later page

    record, indexes = _index_contents(env.store, env.index)
    assert record["previous"] == old and indexes[record["target"]]["model"] == f"local-dir:{weak_model}"
    new_docs, old_docs = indexes[record["target"]]["docs"], indexes[old]["docs"]
    assert set(new_docs) == set(old_docs) == {d["id"] for d in queue_catalog}
    assert new_docs == old_docs  # id by id, payload by payload
    print(f"\n[queue re-index, SIGKILL] killed after {done_at_kill} of 120; resumed at {min(resumed)}; swapped")
