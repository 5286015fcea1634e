"""What the producer, the workers and the dead-letter store agree on about the broker (no Celery here).

The task name every message carries, the kind of a broker URL, and the transport options
the Celery app is built with for each kind (why each is set: :mod:`clipfuse.workers.app`).
"""

from __future__ import annotations

from typing import Any

from clipfuse.settings import Settings

__all__ = ["INGEST_TASK", "broker_kind", "transport_options"]

#: the one task that carries upserts and deletes (one name keeps them in order, see tasks.py)
INGEST_TASK = "clipfuse.ingest"


def broker_kind(url: str) -> str:
    """``redis`` or ``amqp`` for a broker URL (``rediss``, ``pyamqp``, ``amqps`` included)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "redis+socket", "sentinel"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        return "amqp"
    return scheme


def transport_options(settings: Settings) -> dict[str, Any]:
    b = settings.broker
    if broker_kind(b.url) == "redis":
        return {
            "visibility_timeout": b.visibility_timeout_s,
            # kombu sweeps the unacked set every interval x throttle seconds (10 x 10 by default):
            # scan on every tick so a killed worker's messages return soon after the timeout
            "unacked_restore_interval": b.restore_interval_s,
            "unacked_restore_throttle": 1,
            # a worker killed while holding the restore mutex would otherwise block restores for 5 min
            "unacked_mutex_expire": 60,
        }
    if broker_kind(b.url) == "amqp":
        return {"confirm_publish": b.confirm_publish}
    return {}
