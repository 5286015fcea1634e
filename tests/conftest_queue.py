"""Helpers and fixtures for the queue tests: real brokers, real worker processes.

Each test gets its own queue, index and embedded store; workers are started as
their own processes (``python -m celery -A clipfuse.workers.app worker``), watched
through their log, and killed by pid; queues, dead letters and processes are
removed even when a test fails.

Brokers: ``CLIPFUSE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``, a
database of its own: kombu's "unacked" set is shared by every queue of a database)
and ``CLIPFUSE_TEST_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672//``).
With ``QDRANT_URL`` set, workers write to that server instead of an embedded store.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from clipfuse.demo import demo_model_dir
from clipfuse.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("CLIPFUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
AMQP_URL = os.environ.get("CLIPFUSE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKER_URLS = {"redis": REDIS_URL, "amqp": AMQP_URL}
HOW_TO_START = {
    "redis": "start it with `redis-server --daemonize yes --port 6379` (or set CLIPFUSE_TEST_REDIS_URL)",
    "amqp": "start it with `rabbitmq-server -detached` (user guest/guest; or set CLIPFUSE_TEST_AMQP_URL)",
}
#: test settings: small batches, a short Redis visibility timeout, a fast restore sweep
VISIBILITY_TIMEOUT_S = 10
WORKER_START_TIMEOUT_S = 120


def _reachable(url: str) -> str | None:
    parts = urlsplit(url)
    port = parts.port or (6379 if parts.scheme.startswith("redis") else 5672)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=3):
            return None
    except OSError as e:
        return str(e)


def require_broker(kind: str) -> str:
    url = BROKER_URLS[kind]
    problem = _reachable(url)
    if problem:
        pytest.fail(f"the {kind} broker at {url} is not reachable ({problem}): {HOW_TO_START[kind]}")
    return url


def require_demo_model() -> None:
    if not any(demo_model_dir().glob("*.safetensors")):
        pytest.fail(f"the demo model weights are missing from {demo_model_dir()}: run python -m clipfuse.demo.train")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a worker process ----------------------------------------------------------------------------
_BATCH_START = re.compile(r"batch (\d+) start: (\d+) messages, (\d+) documents")
_BATCH_DONE = re.compile(
    r"batch (\d+) done: (\d+) indexed, (\d+) rejected, (\d+) deleted, (\d+) superseded, (\d+) returned"
)


@dataclass
class Worker:
    """A ``celery worker`` process and its log."""

    process: subprocess.Popen[bytes]
    log_path: Path
    started: float
    ready_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 60, poll: float = 0.02) -> re.Match[str]:
        """Wait until ``pattern`` has matched ``count`` times in the log; returns the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            matches = list(regex.finditer(self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker {self.pid} exited ({self.process.returncode}) before {pattern!r}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} x{count} within {timeout:.0f}s; worker log:\n{self.tail()}")
            time.sleep(poll)

    def wait_ready(self, timeout: float = WORKER_START_TIMEOUT_S) -> float:
        self.wait_for(r"@\S+ ready\.", timeout=timeout, poll=0.1)
        self.ready_at = time.monotonic()
        return self.ready_at - self.started

    def batches(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, ...]]]:
        text = self.log()
        starts = [tuple(int(g) for g in m.groups()) for m in _BATCH_START.finditer(text)]
        dones = [tuple(int(g) for g in m.groups()) for m in _BATCH_DONE.finditer(text)]
        return starts, dones  # type: ignore[return-value]

    def busy(self) -> bool:
        starts, dones = self.batches()
        return len(starts) > len(dones)

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} did not exit within {timeout:.0f}s:\n{self.tail()}") from None

    def stop(self, timeout: float = 60) -> int:
        """Warm shutdown (SIGTERM) and wait."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)


# -- one test's queue, index, store ---------------------------------------------------------------
@dataclass
class QueueEnv:
    broker: str
    url: str
    queue: str
    index: str
    store: Path
    tmp: Path
    qdrant_url: str | None = None
    workers: list[Worker] = field(default_factory=list)
    sent_task_ids: list[str] = field(default_factory=list)

    def env(self, **extra: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFUSE_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "CLIPFUSE_BROKER__URL": self.url,
                "CLIPFUSE_BROKER__QUEUE": self.queue,
                "CLIPFUSE_BROKER__VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
                "CLIPFUSE_BROKER__RESTORE_INTERVAL_S": "1",
                "CLIPFUSE_WORKER__STATE_URL": REDIS_URL,
                "CLIPFUSE_WORKER__BATCH_MESSAGES": "4",
                "CLIPFUSE_WORKER__FLUSH_INTERVAL_S": "0.5",
                "CLIPFUSE_BATCH_SIZE": "10",
                "CLIPFUSE_INDEX": self.index,
                # qdrant-client (its local mode, or the server at QDRANT_URL): the tests read the points back with it
                "CLIPFUSE_BACKEND": "qdrant",
                "CLIPFUSE_QDRANT__PATH": str(self.store),
                "CLIPFUSE_MODEL__NAME": "clipfuse-demo",
                "CLIPFUSE_MODEL__DEVICE": "cpu",
                "CLIPFUSE_IMAGES__LOAD_WORKERS": "2",
                "OMP_NUM_THREADS": "1",
            }
        )
        if self.qdrant_url:
            env["CLIPFUSE_QDRANT__URL"] = self.qdrant_url
        env.update({k: str(v) for k, v in extra.items()})
        return {k: v for k, v in env.items() if v != "<unset>"}

    def settings(self, **worker: Any) -> Settings:
        base = Settings(_env_file=None)  # type: ignore[call-arg]
        return base.model_copy(
            update={
                "backend": "qdrant",
                "index": self.index,
                "broker": base.broker.model_copy(update={"url": self.url, "queue": self.queue}),
                "worker": base.worker.model_copy(update={"state_url": REDIS_URL, **worker}),
                "qdrant": base.qdrant.model_copy(update={"path": self.store, "url": self.qdrant_url}),
            }
        )

    def start_worker(self, **extra_env: Any) -> Worker:
        log_path = self.tmp / f"worker-{len(self.workers) + 1}.log"
        handle = log_path.open("wb")
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "clipfuse.workers.app",
            "worker",
            "--pool",
            "solo",
            "-Q",
            self.queue,
            "-n",
            f"{self.queue}-{len(self.workers) + 1}@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        process = subprocess.Popen(
            argv, cwd=ROOT, env=self.env(**extra_env), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        worker = Worker(process, log_path, time.monotonic())
        self.workers.append(worker)
        return worker

    # -- broker side --------------------------------------------------------------------------
    def app(self) -> Any:
        from clipfuse.workers.app import create_app

        if not hasattr(self, "_app"):
            self._app = create_app(self.settings())
        return self._app

    def send_raw(self, kwargs: dict[str, Any], *, task_id: str | None = None) -> str:
        """Publish a message as-is, bypassing the producer's validation."""
        from clipfuse.workers.app import INGEST_TASK

        task_id = task_id or uuid.uuid4().hex
        self.app().send_task(INGEST_TASK, kwargs=kwargs, queue=self.queue, task_id=task_id)
        return task_id

    def take_messages(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """Consume (and acknowledge) every waiting message; returns their kwargs."""
        from kombu import Connection

        out: list[dict[str, Any]] = []
        with Connection(self.url, connect_timeout=5) as connection:
            queue = connection.SimpleQueue(self.queue)
            try:
                while len(out) < limit:
                    try:
                        message = queue.get(timeout=1)
                    except queue.Empty:
                        break
                    _, kwargs, _ = message.decode()
                    out.append(kwargs)
                    message.ack()
            finally:
                queue.close()
        return out

    def depth(self) -> tuple[int, int | None]:
        """(messages waiting, messages delivered and not acknowledged (Redis) / None)."""
        from clipfuse.workers.producer import queue_depth

        d = queue_depth(self.settings(), app=self.app())
        return d.pending, d.in_flight

    def dead_letters(self) -> Any:
        from clipfuse.workers.deadletters import DeadLetters

        return DeadLetters.from_settings(self.settings())

    def stats(self) -> dict[str, int]:
        store = self.dead_letters()
        try:
            return store.stats()
        finally:
            store.close()

    def wait_drained(self, worker: Worker, *, documents: int, timeout: float = 90, quiet: float = 1.0) -> float:
        """Wait until every message is processed: queue empty, nothing unacknowledged, worker idle.

        ``documents``: at least this many documents must have been processed (indexed, rejected or
        superseded, according to the counters; redeliveries make them count more, never less).
        Returns the monotonic time at which the queue was seen drained.
        """
        deadline = time.monotonic() + timeout
        while True:
            if worker.process.poll() is not None:
                raise AssertionError(f"worker exited ({worker.process.returncode}):\n{worker.tail()}")
            pending, in_flight = self.depth()
            stats = self.stats()
            processed = stats["indexed"] + stats["rejected"] + stats["superseded"]
            if pending == 0 and not in_flight and not worker.busy() and processed >= documents:
                seen = time.monotonic()
                time.sleep(quiet)  # messages held in the worker's buffer are flushed within the interval
                pending, in_flight = self.depth()
                if (
                    pending == 0
                    and not in_flight
                    and not worker.busy()
                    and len(worker.batches()[0]) == len(worker.batches()[1])
                ):
                    return seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not drained within {timeout:.0f}s: pending={pending} in_flight={in_flight} "
                    f"counters={stats}; worker log:\n{worker.tail()}"
                )
            time.sleep(0.2)

    # -- engine side --------------------------------------------------------------------------
    def stored_ids(self) -> tuple[int, list[str]]:
        """(point count, document ids of every point) -- with the embedded store, after the worker stopped."""
        from qdrant_client import QdrantClient

        client = QdrantClient(url=self.qdrant_url) if self.qdrant_url else QdrantClient(path=str(self.store))
        try:
            if not client.collection_exists(self.index):
                return 0, []
            count = int(client.count(self.index, exact=True).count)
            ids: list[str] = []
            offset = None
            while True:
                points, offset = client.scroll(self.index, limit=256, offset=offset, with_payload=["doc_id"])
                ids.extend(str((p.payload or {}).get("doc_id")) for p in points)
                if offset is None:
                    break
            return count, ids
        finally:
            client.close()

    # -- clean-up -----------------------------------------------------------------------------
    def cleanup(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
                worker.process.wait(timeout=30)
        try:
            if self.broker == "redis":
                _cleanup_redis_queue(self.url, self.queue)
            else:
                _cleanup_amqp_queue(self.url, self.queue)
        finally:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(f"clipfuse:{self.index}:*"))
            if keys:
                client.delete(*keys)
            client.close()
            if self.qdrant_url:
                from qdrant_client import QdrantClient

                q = QdrantClient(url=self.qdrant_url)
                if q.collection_exists(self.index):
                    q.delete_collection(self.index)
                q.close()
            if hasattr(self, "_app"):
                self._app.close()


def _cleanup_redis_queue(url: str, queue: str) -> None:
    import redis

    from clipfuse.workers.producer import redis_queue_keys

    client = redis.Redis.from_url(url)
    try:
        client.delete(*redis_queue_keys(queue), f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        # messages of this queue left unacknowledged by a killed worker
        stale = []
        for tag, value in client.hscan_iter("unacked"):
            try:
                if json.loads(value)[2] == queue:
                    stale.append(tag)
            except (ValueError, TypeError, IndexError):
                continue
        if stale:
            client.hdel("unacked", *stale)
            client.zrem("unacked_index", *stale)
    finally:
        client.close()


def _cleanup_amqp_queue(url: str, queue: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as connection:
        for action in ("queue_delete", "exchange_delete"):
            channel = connection.channel()  # a failed operation closes its channel
            try:
                getattr(channel, action)(queue)
            except Exception:
                continue
            channel.close()


def make_queue_env(broker: str, tmp_path: Path, *, embedded: bool = False) -> QueueEnv:
    url = require_broker(broker)
    require_broker("redis")  # dead letters and counters live in Redis
    require_demo_model()
    name = f"cfq-{uuid.uuid4().hex[:10]}"
    return QueueEnv(
        broker=broker,
        url=url,
        queue=name,
        index=name,
        store=tmp_path / "qdrant",
        tmp=tmp_path,
        qdrant_url=None if embedded else os.environ.get("QDRANT_URL") or None,
    )


@pytest.fixture
def queue_env_factory(tmp_path: Path) -> Iterator[Callable[..., QueueEnv]]:
    """``queue_env_factory("redis" | "amqp", embedded=False)``: a QueueEnv cleaned up after the test."""
    made: list[QueueEnv] = []

    def make(broker: str, *, embedded: bool = False) -> QueueEnv:
        env = make_queue_env(broker, tmp_path / f"q{len(made)}", embedded=embedded)
        env.tmp.mkdir(parents=True, exist_ok=True)
        made.append(env)
        return env

    yield make
    for env in made:
        env.cleanup()


@pytest.fixture(scope="session")
def queue_catalog(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """120 small synthetic products with absolute image paths."""
    from clipfuse.demo.catalog import write_catalog

    path = write_catalog(tmp_path_factory.mktemp("queue-catalog"), n=120, seed=4242, image_size=96)
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for doc in docs:
        for image in doc["images"]:
            image["path"] = str(path.parent / image["path"])
    return docs
