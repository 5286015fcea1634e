"""Fast tests of the queue pieces: the batch loop, acknowledgements, the producer, the dead-letter store.

No worker process here (see test_queue_delivery / _outage / _rejections for those); the
dead-letter and queue-depth tests use the real Redis / RabbitMQ on this machine.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from clipfuse.errors import BackendUnavailable, ConfigurationError, EmbeddingError
from clipfuse.schemas import IngestReport, Rejection, parse_document
from clipfuse.schemas import limits as L
from clipfuse.settings import Settings, WorkerSettings
from clipfuse.workers import producer as producer_module
from clipfuse.workers.app import INGEST_TASK, create_app
from clipfuse.workers.batches import BatchProcessor
from clipfuse.workers.deadletters import DeadLetters
from clipfuse.workers.producer import EnqueueReport, enqueue, enqueue_delete, queue_depth

pytest_plugins = ["conftest_queue"]


def doc(i: int | str, **extra: Any) -> dict[str, Any]:
    return {"id": str(i), "title": f"product {i}", **extra}


def upsert(*docs: dict[str, Any], attempt: int = 0) -> dict[str, Any]:
    return {"op": "upsert", "documents": list(docs), "attempt": attempt}


class FakeCore:
    """Stands in for Indexer.index_batch / delete and the dead-letter store."""

    def __init__(self, failures: Sequence[BaseException] = ()) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.failures = list(failures)
        self.recorded: list[tuple[list[Rejection], list[str], dict[str, int]]] = []
        self.republished: list[dict[str, Any]] = []
        self.slept: list[float] = []
        self.now = 0.0
        self.poison: set[str] = set()

    def index_batch(self, docs: list[Any]) -> IngestReport:
        if self.failures:
            raise self.failures.pop(0)
        if self.poison & {d.get("id") for d in docs}:
            raise EmbeddingError("the model choked")
        self.calls.append(("upsert", [d["id"] for d in docs]))
        rejected = [
            Rejection(id=d["id"], code="image_unreadable", reason="bad", stage="load") for d in docs if d.get("bad")
        ]
        return IngestReport(indexed=len(docs) - len(rejected), rejected=rejected, stage_seconds={"load": 0.01})

    def delete(self, ids: list[str]) -> IngestReport:
        if self.failures:
            raise self.failures.pop(0)
        self.calls.append(("delete", list(ids)))
        return IngestReport(deleted=len(ids))

    def record(self, rejections: Sequence[Rejection], *, indexed_ids: Sequence[str], counts: Mapping[str, int]) -> None:
        self.recorded.append((list(rejections), list(indexed_ids), dict(counts)))

    def republish(self, messages: Sequence[Mapping[str, Any]]) -> None:
        self.republished.extend(dict(m) for m in messages)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def processor(self, *, should_stop: Any = lambda: False, **worker: Any) -> BatchProcessor:
        settings = WorkerSettings(**{"retry_base_s": 1.0, "retry_max_s": 8.0, "retry_in_process_s": 20.0, **worker})
        return BatchProcessor(
            index_batch=self.index_batch,
            delete=self.delete,
            record=self.record,
            republish=self.republish,
            should_stop=should_stop,
            worker=settings,
            batch_size=3,
            sleep=self.sleep,
            clock=lambda: self.now,
        )

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for _, _, counts in self.recorded:
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        return total


# -- the batch loop ----------------------------------------------------------------------------
def test_messages_are_merged_into_gpu_sized_chunks() -> None:
    core = FakeCore()
    outcome = core.processor().process([upsert(doc(1), doc(2)), upsert(doc(3), doc(4)), upsert(doc(5))])
    assert outcome == {"requeue": []}
    assert core.calls == [("upsert", ["1", "2", "3"]), ("upsert", ["4", "5"])]
    assert core.counts()["indexed"] == 5 and core.counts()["batches"] == 1


def test_repeated_ids_keep_the_last_version_and_are_not_rejections() -> None:
    core = FakeCore()
    message = upsert(doc(1), doc(2, title="old"))
    outcome = core.processor().process([message, message, upsert(doc(2, title="new"))])
    assert outcome == {"requeue": []}
    assert core.calls == [("upsert", ["1", "2"])]
    assert core.counts()["superseded"] == 3
    assert all(not rejections for rejections, _, _ in core.recorded)


def test_upserts_and_deletes_keep_their_order() -> None:
    core = FakeCore()
    core.processor().process(
        [upsert(doc("a")), {"op": "delete", "ids": ["a"]}, upsert(doc("b")), upsert(doc("a", title="again"))]
    )
    assert core.calls == [("upsert", ["a"]), ("delete", ["a"]), ("upsert", ["b", "a"])]


def test_rejections_are_recorded_and_indexed_ids_leave_the_dead_letters() -> None:
    core = FakeCore()
    core.processor().process([upsert(doc(1), doc(2, bad=True), doc(3))])
    rejections, indexed_ids, counts = core.recorded[0]
    assert [r.id for r in rejections] == ["2"]
    assert indexed_ids == ["1", "3"]
    assert counts["indexed"] == 2 and counts["rejected"] == 1


def test_engine_outage_is_retried_with_growing_backoff_and_never_rejected() -> None:
    core = FakeCore(failures=[BackendUnavailable("down")] * 3)
    outcome = core.processor().process([upsert(doc(1), doc(2))])
    assert outcome == {"requeue": []}
    assert core.calls == [("upsert", ["1", "2"])]
    waits = _waits(core.slept)
    assert len(waits) == 3 and waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and 2.0 <= waits[2] <= 4.0
    assert core.counts()["retries"] == 3 and core.counts().get("rejected", 0) == 0
    assert not core.republished


def test_a_long_outage_republishes_the_messages_with_their_attempt() -> None:
    core = FakeCore(failures=[BackendUnavailable("down")] * 100)
    messages = [upsert(doc(1)), upsert(doc(2), attempt=2)]
    outcome = core.processor(retry_in_process_s=10).process(messages)
    assert outcome == {"requeue": []}  # acknowledged: the re-published copies carry the documents
    assert [m["documents"] for m in core.republished] == [[doc(1)], [doc(2)]]
    assert all(m["attempt"] > 2 for m in core.republished)
    assert sum(core.slept) <= 10 + 1e-6
    assert core.counts()["republished"] == 2 and not core.calls


def test_republish_failure_returns_the_messages_instead() -> None:
    core = FakeCore(failures=[BackendUnavailable("down")] * 100)

    def broken(_: Any) -> None:
        raise ConnectionError("broker gone")

    processor = core.processor(retry_in_process_s=2)
    processor.republish = broken
    assert processor.process([upsert(doc(1)), upsert(doc(2))]) == {"requeue": [0, 1]}


def test_shutdown_during_an_outage_returns_only_the_unfinished_messages() -> None:
    core = FakeCore()
    stop = {"now": False}

    def delete(ids: list[str]) -> IngestReport:
        stop["now"] = True  # SIGTERM arrives while the engine is down
        raise BackendUnavailable("down")

    processor = core.processor(should_stop=lambda: stop["now"])
    processor.delete = delete
    messages = [upsert(doc(1), doc(2), doc(3)), {"op": "delete", "ids": ["9"]}, upsert(doc(4))]
    assert processor.process(messages) == {"requeue": [1, 2]}
    assert core.calls == [("upsert", ["1", "2", "3"])]
    assert core.counts()["returned"] == 2


def test_warm_shutdown_finishes_the_chunk_in_progress_and_returns_only_the_rest() -> None:
    core = FakeCore()
    stop = {"now": False}

    def index_batch(docs: list[Any]) -> IngestReport:
        stop["now"] = True  # SIGTERM arrives while the first chunk is being indexed
        return core.index_batch(docs)

    processor = core.processor(should_stop=lambda: stop["now"])
    processor.index_batch = index_batch
    # chunks of 3: [1, 2, 3] then [5, 4']; message 0's doc 4 is superseded by message 2's, so it waits for it
    messages = [upsert(doc(1), doc(4)), upsert(doc(2), doc(3)), upsert(doc(5), doc(4, title="new"))]
    assert processor.process(messages) == {"requeue": [0, 2]}
    assert core.calls == [("upsert", ["1", "2", "3"])]


def test_configuration_errors_are_retried_not_rejected() -> None:
    core = FakeCore(failures=[ConfigurationError("collection has another dimension")])
    assert core.processor().process([upsert(doc(1))]) == {"requeue": []}
    assert core.counts()["indexed"] == 1 and core.counts()["retries"] == 1


def test_an_unexpected_error_is_isolated_to_the_document_that_causes_it() -> None:
    core = FakeCore()
    core.poison = {"4"}
    processor = core.processor()
    processor.batch_size = 8
    assert processor.process([upsert(*(doc(i) for i in range(1, 7)))]) == {"requeue": []}
    rejected = [r for rejections, _, _ in core.recorded for r in rejections]
    assert [(r.id, r.code) for r in rejected] == [("4", "internal_error")]
    assert "EmbeddingError" in rejected[0].reason and rejected[0].document == doc(4)
    assert sorted(i for kind, ids in core.calls for i in ids) == ["1", "2", "3", "5", "6"]


def test_messages_that_are_not_understood_are_dead_lettered() -> None:
    core = FakeCore()
    too_many = upsert(*(doc(i) for i in range(L.MAX_DOCUMENTS_PER_MESSAGE + 1)))
    outcome = core.processor().process(
        [{"op": "upsert", "documents": "nope"}, {"op": "explode"}, {"op": "delete", "ids": [3]}, too_many]
    )
    assert outcome == {"requeue": []}
    rejected = core.recorded[0][0]
    assert [r.code for r in rejected[:3]] == ["bad_message"] * 3
    assert {r.code for r in rejected[3:]} == {"message_too_large"} and len(rejected) == 3 + len(too_many["documents"])
    assert rejected[3].document == doc(0)  # replayable: the producer re-sends it in parts


def test_a_bug_in_the_batch_loop_returns_every_message() -> None:
    core = FakeCore()
    processor = core.processor()
    processor._plan = lambda messages: 1 / 0  # type: ignore[assignment,method-assign]
    assert processor.process([upsert(doc(1)), upsert(doc(2))]) == {"requeue": [0, 1]}


def _waits(slept: list[float]) -> list[float]:
    """Group the 0.2 s sleep steps back into waits."""
    waits, current = [], 0.0
    for step in slept:
        current += step
        if step < 0.2 - 1e-9:
            waits.append(current)
            current = 0.0
    if current:
        waits.append(current)
    return waits


# -- acknowledgements: celery-batches acks on return AND on exception; ours does not ----------------
class FakeRequest:
    def __init__(self, i: int) -> None:
        self.id = f"task-{i}"
        self.name = INGEST_TASK
        self._payload = ((), upsert(doc(i)), {})
        self.delivery_info: dict[str, Any] = {}
        self.hostname = "test"
        self.ignore_result = True
        self.reply_to = None
        self.correlation_id = self.id
        self.request_dict: dict[str, Any] = {}
        self.outcome: str | None = None

    def acknowledge(self) -> None:
        self.outcome = "ack"

    def reject(self, requeue: bool = False) -> None:
        self.outcome = "requeue" if requeue else "reject"


class InlinePool:
    def apply_async(self, target: Any, args: Any, callback: Any = None, **_: Any) -> None:
        callback(target(*args))


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"requeue": []}, ["ack", "ack", "ack"]),
        ({"requeue": [1]}, ["ack", "requeue", "ack"]),
        (ZeroDivisionError("bug"), ["requeue", "requeue", "requeue"]),
    ],
)
def test_flush_acknowledges_only_what_the_batch_finished(result: Any, expected: list[str]) -> None:
    app = create_app(Settings())
    task = app.tasks[INGEST_TASK]
    seen: list[list[dict[str, Any]]] = []

    def run(requests: list[Any]) -> Any:
        seen.append([r.kwargs for r in requests])
        if isinstance(result, Exception):
            raise result
        return result

    task._pool = InlinePool()
    task.run = run
    requests = [FakeRequest(i) for i in range(3)]
    task.flush(requests)
    assert [r.outcome for r in requests] == expected
    assert seen == [[upsert(doc(i)) for i in range(3)]]


def test_app_defaults_keep_the_guarantees() -> None:
    settings = Settings()
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"batch_messages": 32, "prefetch_multiplier": 2})}
    )
    conf = create_app(settings).conf
    assert conf.task_acks_late and conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.worker_pool == "solo" and conf.worker_concurrency == 1
    assert conf.worker_prefetch_multiplier == 64  # >= one batch of messages
    assert conf.broker_transport_options["visibility_timeout"] == settings.broker.visibility_timeout_s
    assert conf.broker_transport_options["unacked_restore_throttle"] == 1
    amqp = settings.model_copy(update={"broker": settings.broker.model_copy(update={"url": "amqp://g:g@h:5672//"})})
    assert create_app(amqp).conf.broker_transport_options == {"confirm_publish": True}


def test_importing_the_producer_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, clipfuse.workers.producer, clipfuse.workers.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the producer ------------------------------------------------------------------------------
class FakeApp:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    @contextmanager
    def producer_or_acquire(self) -> Iterator[object]:
        yield object()

    def send_task(self, name: str, kwargs: dict[str, Any], queue: str, producer: Any = None) -> None:
        assert name == INGEST_TASK
        self.sent.append({"queue": queue, **kwargs})


@pytest.fixture
def no_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_module, "_count", lambda settings, **counts: None)


def test_enqueue_validates_before_sending_and_packs_many_per_message(no_counters: None, tmp_path: Path) -> None:
    app = FakeApp()
    docs = [doc(i, images=[{"path": f"img/{i}.jpg"}]) for i in range(10)]
    docs.insert(3, {"id": "bad", "title": "x" * (L.MAX_TITLE_CHARS + 1)})
    docs.insert(5, {"id": "empty"})
    report = enqueue(docs, settings=Settings(), app=app, chunk_size=4, base_dir=tmp_path)  # type: ignore[arg-type]
    assert report.accepted == 10 and report.messages == 3
    assert [(r.id, r.position) for r in report.refused] == [("bad", 3), ("empty", 5)]
    assert "MAX_TITLE_CHARS" in report.refused[0].reason and "empty" in report.refused[1].reason
    assert [len(m["documents"]) for m in app.sent] == [4, 4, 2]
    assert all(m["op"] == "upsert" and m["attempt"] == 0 and m["queue"] == "clipfuse" for m in app.sent)
    first = app.sent[0]["documents"][0]
    assert first["images"] == [{"path": str(tmp_path / "img" / "0.jpg")}]  # sent as absolute paths
    assert parse_document(first).id == "0"


def test_enqueue_bounds_message_bytes_and_refuses_a_document_over_the_budget(no_counters: None) -> None:
    app = FakeApp()
    settings = Settings()
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"max_message_bytes": 64 * 1024})}
    )
    inline = base64.b64encode(b"\xff" * 20_000).decode()  # ~27 KB of JSON each
    huge = base64.b64encode(b"\xff" * 60_000).decode()
    docs = [doc(i, images=[{"data": inline}]) for i in range(5)] + [doc("huge", images=[{"data": huge}])]
    report = enqueue(docs, settings=settings, app=app, chunk_size=100)  # type: ignore[arg-type]
    assert [len(m["documents"]) for m in app.sent] == [2, 2, 1]
    assert [(r.id, r.code) for r in report.refused] == [("huge", "message_too_large")]
    assert "MAX_MESSAGE_BYTES" in report.refused[0].reason


def test_enqueue_delete_sends_ids_in_order(no_counters: None) -> None:
    app = FakeApp()
    report = enqueue_delete(["a", "b", "", "c"], settings=Settings(), app=app, chunk_size=2)  # type: ignore[arg-type]
    assert [m["ids"] for m in app.sent] == [["a", "b"], ["c"]]
    assert [r.position for r in report.refused] == [2]


def test_never_more_than_max_documents_per_message(no_counters: None) -> None:
    app = FakeApp()
    enqueue([doc(i) for i in range(L.MAX_DOCUMENTS_PER_MESSAGE + 5)], settings=Settings(), app=app, chunk_size=10**6)  # type: ignore[arg-type]
    assert [len(m["documents"]) for m in app.sent] == [L.MAX_DOCUMENTS_PER_MESSAGE, 5]


# -- the dead-letter store (real Redis) ------------------------------------------------------------
@pytest.fixture
def dead_letters() -> Iterator[DeadLetters]:
    import redis
    from conftest_queue import REDIS_URL, require_broker

    require_broker("redis")
    store = DeadLetters(redis.Redis.from_url(REDIS_URL), f"cfq-unit-{uuid.uuid4().hex[:8]}", max_items=5)
    yield store
    store.clear()
    store.reset_stats()
    store.close()


@pytest.mark.integration
def test_dead_letters_store_list_forget_trim(dead_letters: DeadLetters) -> None:
    store = dead_letters
    store.record(
        [
            Rejection(id=f"d{i}", code="image_unreadable", reason=f"bad {i}", stage="load", document=doc(i))
            for i in range(3)
        ],
        counts={"rejected": 3, "indexed": 7},
    )
    assert store.count() == 3 and store.stats()["rejected"] == 3 and store.stats()["indexed"] == 7
    assert [letter.key for letter in store.list(limit=2, offset=0, newest_first=False)] == ["d0", "d1"]
    store.record([], indexed_ids=["d1"])  # indexed after all: no longer a dead letter
    assert {letter.key for letter in store.list()} == {"d0", "d2"}
    store.record([Rejection(id=None, code="bad_message", reason="?", stage="validate")])
    store.record([Rejection(id=f"e{i}", code="x", reason="y", stage="load") for i in range(5)])
    assert store.count() == 5  # trimmed to max_items, oldest first
    assert "d0" not in {letter.key for letter in store.list(limit=10)}


@pytest.mark.integration
def test_dead_letters_replay_removes_only_what_was_re_enqueued(dead_letters: DeadLetters) -> None:
    store = dead_letters
    store.record(
        [
            Rejection(id="ok", code="image_unreachable", reason="host down", stage="load", document=doc("ok")),
            Rejection(id="still-bad", code="validation", reason="?", stage="validate", document={"id": "still-bad"}),
            Rejection(id="too-big", code="validation", reason="?", stage="validate", document=None),
        ]
    )
    sent: list[list[dict[str, Any]]] = []

    def fake_enqueue(docs: list[dict[str, Any]]) -> EnqueueReport:
        sent.append(docs)
        return enqueue(docs, settings=Settings(), app=FakeApp())  # type: ignore[arg-type]

    report = store.replay(fake_enqueue, keys=["ok", "still-bad", "too-big", "nope"])
    assert report.replayed == ["ok"]
    assert list(report.still_invalid) == ["still-bad"] and "empty" in report.still_invalid["still-bad"]
    assert report.not_replayable == ["too-big"] and report.missing == ["nope"]
    assert {letter.key for letter in store.list()} == {"still-bad", "too-big"}


@pytest.mark.integration
def test_a_newer_rejection_is_not_removed_by_an_older_replay(dead_letters: DeadLetters) -> None:
    store = dead_letters
    store.record([Rejection(id="a", code="c1", reason="first", stage="load", document=doc("a"))])
    old = store.get(["a"])
    store.record([Rejection(id="a", code="c2", reason="second", stage="load", document=doc("a"))])
    assert store.remove(old) == 0
    assert store.get(["a"])[0].rejection.reason == "second"


# -- queue depth on both brokers ---------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_queue_depth_counts_waiting_messages(broker: str) -> None:
    from conftest_queue import BROKER_URLS, REDIS_URL, _cleanup_amqp_queue, _cleanup_redis_queue, require_broker

    url = require_broker(broker)
    queue = f"cfq-depth-{uuid.uuid4().hex[:8]}"
    settings = Settings()
    settings = settings.model_copy(
        update={
            "index": queue,
            "broker": settings.broker.model_copy(update={"url": url, "queue": queue}),
            "worker": settings.worker.model_copy(update={"state_url": REDIS_URL}),
        }
    )
    app = create_app(settings)
    try:
        report = enqueue([doc(i) for i in range(7)], settings=settings, app=app, chunk_size=3)
        enqueue_delete(["0"], settings=settings, app=app)
        assert report.messages == 3
        assert queue_depth(settings, app=app).pending == 4
    finally:
        (_cleanup_redis_queue if broker == "redis" else _cleanup_amqp_queue)(BROKER_URLS[broker], queue)
        app.close()
        store = DeadLetters.from_settings(settings)
        assert store.stats()["enqueued"] == 7
        store.reset_stats()
        store.close()


def test_a_reindex_step_runs_in_its_place_among_upserts_and_deletes_and_is_retried() -> None:
    """``clipfuse reindex --queue`` sends its steps through the same queue: a step runs between the
    upserts sent before it and those sent after, and an engine outage during it is retried."""
    from clipfuse.errors import BackendUnavailable

    core = FakeCore()
    outages = [BackendUnavailable("engine down")]

    def step(message: Mapping[str, Any]) -> None:
        if outages:
            raise outages.pop()
        core.calls.append(("reindex", [message["step"]]))

    processor = core.processor()
    processor.steps = {"reindex": step}
    reindex = {"op": "reindex", "step": "copy", "seq": 1, "job": {"job": "j", "model": "m"}}
    outcome = processor.process(
        [upsert(doc(1)), reindex, {"op": "delete", "ids": ["1"]}, upsert(doc(2)), {"op": "nope"}]
    )
    assert outcome == {"requeue": []}
    assert core.calls == [("upsert", ["1"]), ("reindex", ["copy"]), ("delete", ["1"]), ("upsert", ["2"])]
    assert core.slept  # the outage was waited out, not turned into a rejection
    [(rejections, _, _)] = [r for r in core.recorded if r[0]]
    assert [r.code for r in rejections] == ["bad_message"]  # an op nobody handles is still refused
