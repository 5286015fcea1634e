"""Guarantee: the broker restarting while documents are queued and a worker runs loses nothing, duplicates nothing.

The broker is a private ``redis-server`` started by this test on a free localhost port, in a temp dir,
with ``appendonly yes`` and ``appendfsync always`` (what docs/queue.md asks of a Redis broker). The
machine's shared Redis and RabbitMQ are never restarted: other tests and CI use them.

The dead-letter store and counters (``CLIPFUSE_WORKER__STATE_URL``) stay on the shared Redis, as in the
other queue tests (``conftest_queue`` points them there and reads the counters from there): so this test
isolates the *broker* restart. A state-store outage is a different failure (retried as an engine outage,
see test_queue_outage.py), and keeping the counters up lets ``wait_drained`` watch progress throughout.

Two ways the broker goes away, mid-batch (as soon as the worker's second batch starts):

- ``sigterm``: a clean shutdown (Redis flushes its AOF and exits), the ordinary restart;
- ``sigkill``: Redis dies without a word; with ``appendfsync always`` every write it answered is
  already on disk, so the queue and kombu's "unacked" hash come back from the AOF.

After a few seconds the same ``redis-server`` (same port, same dir) starts again. The worker must
reconnect by itself (Celery's consumer restarts its connection; it must not exit), and once the
queue drains the store must hold each of the documents exactly once. The batch running during the
outage cannot acknowledge its messages (the broker is gone); they stay in the persisted "unacked"
hash and come back after the visibility timeout (10 s in these tests): written twice, one point each.

Each run prints what it observed (``pytest -s`` shows it).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from clipfuse.workers.producer import enqueue

if TYPE_CHECKING:
    from conftest_queue import QueueEnv

pytest_plugins = ["conftest_queue"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_SERVER = "/usr/bin/redis-server"
DOCUMENTS = 80
#: how long the broker stays down
DOWNTIME_S = 3.0
#: the worker must be connected again within this after the broker is back
RECONNECT_LIMIT_S = 20
#: and everything indexed within this after the broker is back (visibility timeout 10 s + restore sweep 1 s + work)
RECOVERY_LIMIT_S = 40


@dataclass
class PrivateRedis:
    """A ``redis-server`` of this test's own, persistent (AOF, fsync on every write), restartable."""

    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> float:
        """Start (or restart) the server on the same port and dir; returns the seconds until it answers PING."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        log = (self.dir / f"redis-{self.starts}.log").open("wb")
        argv = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        started = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        import redis

        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited ({self.process.returncode}):\n{self.log()}")
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=2)
            try:
                if client.ping():  # answers only once the AOF is loaded (LOADING otherwise)
                    return time.monotonic() - started
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError, redis.exceptions.TimeoutError):
                pass
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server not answering within {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, sig: int, timeout: float = 20) -> None:
        assert self.process is not None and self.process.poll() is None, "not running"
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"redis-server did not exit on {sig!r}:\n{self.log()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return "\n".join(
            "\n".join(p.read_text(errors="replace").splitlines()[-15:]) for p in sorted(self.dir.glob("redis-*.log"))
        )


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    from conftest_queue import free_port

    folder = tmp_path / "broker"
    folder.mkdir()
    server = PrivateRedis(port=free_port(), dir=folder)
    server.start()
    try:
        yield server
    finally:
        server.kill()  # by its pid, even when the test failed


@pytest.fixture
def restart_env(private_redis: PrivateRedis, tmp_path: Path) -> Iterator[QueueEnv]:
    """A QueueEnv whose broker is the private Redis (dead letters and counters on the shared one)."""
    from conftest_queue import make_queue_env

    env = make_queue_env("redis", tmp_path / "q", embedded=False)
    env.tmp.mkdir(parents=True)
    env.url = private_redis.url
    try:
        yield env
    finally:
        import redis

        # the private broker is thrown away with its dir; if it is down, there is no queue to clean
        with contextlib.suppress(redis.exceptions.ConnectionError):
            env.cleanup()


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_broker_restart_with_documents_queued_loses_and_duplicates_nothing(
    stop: str, private_redis: PrivateRedis, restart_env: QueueEnv, queue_catalog: list[dict[str, Any]]
) -> None:
    env = restart_env
    docs = queue_catalog[:DOCUMENTS]
    assert len({d["id"] for d in docs}) == DOCUMENTS
    worker = env.start_worker()
    report = enqueue(docs, settings=env.settings(), app=env.app(), chunk_size=5)
    assert report.accepted == DOCUMENTS and report.messages == DOCUMENTS // 5 and not report.refused
    env.app().close()  # the test's own broker connections: not needed until the broker is back
    worker.wait_ready()
    worker.wait_for(r"Connected to redis://", timeout=30)

    # batches of 4 messages x 5 documents: take the broker away as soon as the second batch starts
    worker.wait_for(r"batch 2 start", timeout=60, poll=0.005)
    private_redis.stop(signal.SIGTERM if stop == "sigterm" else signal.SIGKILL)
    down_at = time.monotonic()
    time.sleep(DOWNTIME_S)
    assert worker.process.poll() is None, f"the worker exited while the broker was down:\n{worker.tail()}"
    indexed_during_outage = env.stats()["indexed"]
    assert indexed_during_outage < DOCUMENTS, "everything was indexed before the broker went down: nothing tested"
    lost_connection = "Connection to broker lost" in worker.log()

    load_s = private_redis.start()
    up_at = time.monotonic()
    pending_after_restart, in_flight_after_restart = env.depth()
    # what the broker kept: messages still queued + delivered-but-unacknowledged, persisted through the restart
    assert pending_after_restart + (in_flight_after_restart or 0) > 0 or indexed_during_outage >= DOCUMENTS

    worker.wait_for(r"Connected to redis://", count=2, timeout=RECONNECT_LIMIT_S + 5, poll=0.05)
    reconnect_s = time.monotonic() - up_at
    drained_at = env.wait_drained(worker, documents=DOCUMENTS, timeout=RECOVERY_LIMIT_S + 30)
    recovery_s = drained_at - up_at
    stats = env.stats()
    assert worker.stop() == 0, worker.tail()

    count, ids = env.stored_ids()
    sent = {d["id"] for d in docs}
    missing = sent - set(ids)
    assert not missing, f"{len(missing)} documents lost: {sorted(missing)[:10]}"
    assert len(ids) == len(set(ids)), "duplicate points for one document"
    assert count == DOCUMENTS, f"{count} points for {DOCUMENTS} documents"
    assert stats["rejected"] == 0, "a broker restart must not turn into rejections"
    print(
        f"\n[redis {stop}] broker stopped during batch 2 with {indexed_during_outage} of {DOCUMENTS} indexed "
        f"(worker saw the loss: {lost_connection}); down {up_at - down_at:.1f}s, AOF reloaded in {load_s:.2f}s "
        f"with {pending_after_restart} queued + {in_flight_after_restart} unacknowledged messages; worker "
        f"reconnected {reconnect_s:.1f}s and drained {recovery_s:.1f}s after the broker was back; "
        f"{count} points for {len(set(ids))} ids, {stats['indexed']} writes (redeliveries included), 0 rejected"
    )
    assert reconnect_s <= RECONNECT_LIMIT_S, f"the worker took {reconnect_s:.1f}s to reconnect"
    assert recovery_s <= RECOVERY_LIMIT_S, f"everything indexed only {recovery_s:.1f}s after the broker was back"
