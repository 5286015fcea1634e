"""Delivery guarantees with real brokers and real worker processes.

1. SIGKILL in the middle of a batch, then a restart: every document indexed exactly once, in bounded time.
4. SIGTERM: the in-flight batch finishes (or is returned), nothing is lost.
5. The same message delivered twice: one point per document.

Each test prints what it observed (``pytest -s`` shows it) -- counts and seconds.
"""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any

import pytest

from clipfuse.workers.producer import enqueue

pytest_plugins = ["conftest_queue"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

BROKERS = ["redis", "amqp"]
#: after the restarted worker is ready, the rest must be indexed within this (Redis: visibility timeout 10 s)
RECOVERY_LIMIT_S = 30


def _assert_exactly_once(env: Any, docs: list[dict[str, Any]]) -> int:
    count, ids = env.stored_ids()
    sent = {d["id"] for d in docs}
    missing = sent - set(ids)
    assert not missing, f"{len(missing)} documents lost: {sorted(missing)[:10]}"
    assert len(ids) == len(set(ids)), "duplicate points for one document"
    assert count == len(sent), f"{count} points for {len(sent)} documents"
    return count


@pytest.mark.parametrize("broker", BROKERS)
def test_sigkill_mid_batch_then_restart_indexes_everything_once(
    broker: str, queue_env_factory: Any, queue_catalog: list[dict[str, Any]]
) -> None:
    env = queue_env_factory(broker)
    docs = queue_catalog[:80]
    worker = env.start_worker()
    report = enqueue(docs, settings=env.settings(), app=env.app(), chunk_size=5)
    assert report.accepted == 80 and report.messages == 16 and not report.refused
    worker.wait_ready()

    # batches of 4 messages x 5 documents; kill the worker as soon as its second batch starts
    worker.wait_for(r"batch 2 start", timeout=60, poll=0.005)
    worker.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    worker.wait_exit(10)
    _starts, dones = worker.batches()
    assert not any(d[0] == 2 for d in dones), "batch 2 finished before the kill: not a mid-batch kill"
    indexed_before = env.stats()["indexed"]
    assert indexed_before < 80

    restarted = env.start_worker()
    startup_s = restarted.wait_ready()
    drained_at = env.wait_drained(restarted, documents=80, timeout=90)
    recovery_s = drained_at - (restarted.ready_at or drained_at)
    restarted.stop()

    count = _assert_exactly_once(env, docs)
    assert env.stats()["rejected"] == 0
    print(
        f"\n[{broker}] SIGKILL during batch 2 ({indexed_before} documents indexed before the kill); "
        f"restart ready in {startup_s:.1f}s; all {count} documents indexed exactly once "
        f"{recovery_s:.1f}s after ready ({drained_at - killed_at:.1f}s after the kill)"
    )
    assert recovery_s <= RECOVERY_LIMIT_S, f"recovery took {recovery_s:.1f}s after the restarted worker was ready"


@pytest.mark.parametrize("broker", BROKERS)
def test_sigterm_finishes_or_returns_the_batch_and_loses_nothing(
    broker: str, queue_env_factory: Any, queue_catalog: list[dict[str, Any]]
) -> None:
    env = queue_env_factory(broker)
    docs = queue_catalog[:80]
    worker = env.start_worker()
    report = enqueue(docs, settings=env.settings(), app=env.app(), chunk_size=5)
    assert report.accepted == 80
    worker.wait_ready()

    worker.wait_for(r"batch 2 start", timeout=60, poll=0.005)
    worker.signal(signal.SIGTERM)
    term_at = time.monotonic()
    rc = worker.wait_exit(60)
    exit_s = time.monotonic() - term_at
    assert rc == 0, worker.tail()
    starts, dones = worker.batches()
    assert len(starts) == len(dones), f"a batch was cut short:\n{worker.tail()}"
    batch2 = next(d for d in dones if d[0] == 2)
    assert batch2[1] + batch2[5] > 0  # indexed its documents (or returned its messages)

    # the messages the worker had prefetched went back to the queue at once (no visibility timeout wait)
    pending, in_flight = env.depth()
    assert not in_flight, f"{in_flight} messages still held as unacknowledged after a warm shutdown"
    indexed_before = env.stats()["indexed"]
    assert pending > 0 or indexed_before == 80

    restarted = env.start_worker()
    restarted.wait_ready()
    env.wait_drained(restarted, documents=80, timeout=90)
    restarted.stop()
    count = _assert_exactly_once(env, docs)
    print(
        f"\n[{broker}] SIGTERM during batch 2: exited in {exit_s:.1f}s after finishing it "
        f"({batch2[1]} indexed, {batch2[5]} returned), {indexed_before} indexed before the stop, {pending} messages "
        f"back on the queue; after a restart {count} of {len(docs)} documents indexed once"
    )


def test_same_message_delivered_twice_leaves_one_point_per_document(
    queue_env_factory: Any, queue_catalog: list[dict[str, Any]]
) -> None:
    env = queue_env_factory("redis")
    docs = queue_catalog[:30]
    worker = env.start_worker()
    message = {"op": "upsert", "documents": docs[:20], "attempt": 0}
    task_id = uuid.uuid4().hex
    # the same message (same task id, same body) twice in a row: both land in one batch
    env.send_raw(message, task_id=task_id)
    env.send_raw(message, task_id=task_id)
    # overlapping messages
    env.send_raw({"op": "upsert", "documents": docs[10:30], "attempt": 0})
    worker.wait_ready()
    worker.wait_for(r"batch \d+ done", timeout=60)
    # and the same message again, after the first copies were acknowledged
    env.send_raw(message, task_id=task_id)
    env.wait_drained(worker, documents=80, timeout=60)
    stats = env.stats()
    dead = env.dead_letters()
    dead_count = dead.count()
    dead.close()
    worker.stop()

    count = _assert_exactly_once(env, docs)
    assert dead_count == 0, "a repeated document must not be dead-lettered as a duplicate"
    assert stats["rejected"] == 0
    print(
        f"\n[redis] 4 messages, 80 documents delivered for 30 ids: {count} points; "
        f"{stats['indexed']} writes, {stats['superseded']} repeats skipped inside a batch, 0 rejected"
    )
