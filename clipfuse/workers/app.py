"""The Celery application, built from settings.

``celery -A clipfuse.workers.app worker`` finds the module-level :data:`app`
(settings from the environment, ``CLIPFUSE_BROKER__URL`` etc.); ``clipfuse worker``
wraps that command with the same defaults.

What is configured here, and why (see ``docs/queue.md``):

- JSON only, no result backend: messages are plain documents, readable by any client.
- Late acknowledgement: a message is acknowledged after its documents are written
  (or rejected into the dead-letter store), never when it is received.
- The ``solo`` pool with one process per GPU: the batch runs in the process that
  holds the broker connection, so if the worker dies, its connection dies with it
  and every unacknowledged message is returned (a killed prefork *child* would
  leave its batch's messages held by a live parent).
- Prefetch of ``prefetch_multiplier x batch_messages`` messages: celery-batches can
  only fill a batch from messages it has received.
- Redis: a visibility timeout and a short restore interval, so that the messages of
  a killed worker come back after ``visibility_timeout_s`` (plus at most
  ``restore_interval_s``) and not later.
- Broker restarts: the worker reconnects, retrying forever (Celery stops after 100 tries).
- RabbitMQ: publisher confirms, so an enqueued document is in the broker when
  :func:`clipfuse.workers.producer.enqueue` returns.

Importing this module imports Celery, not torch: the model loads when a worker starts.
"""

from __future__ import annotations

import logging

from celery import Celery

from clipfuse.settings import Settings, get_settings
from clipfuse.workers.broker import INGEST_TASK, transport_options
from clipfuse.workers.tasks import register_tasks

__all__ = ["INGEST_TASK", "app", "create_app", "settings_of"]

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, set_as_current: bool = False) -> Celery:
    """A Celery app for ``settings`` with clipfuse's task registered."""
    settings = settings or get_settings()
    b, w = settings.broker, settings.worker
    app = Celery("clipfuse", broker=b.url, set_as_current=set_as_current)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        # protects ordinary tasks in a prefork child; batches are protected by the solo pool instead
        task_reject_on_worker_lost=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_pool="solo",
        worker_concurrency=1,
        worker_prefetch_multiplier=w.prefetch_multiplier * w.batch_messages,
        worker_send_task_events=False,
        task_default_queue=b.queue,
        task_default_exchange=b.queue,
        task_default_routing_key=b.queue,
        task_create_missing_queues=True,
        broker_transport_options=transport_options(settings),
        broker_heartbeat=b.heartbeat_s,
        broker_connection_retry_on_startup=True,
        # a broker restart (or outage) while a worker runs: Celery's consumer reconnects by itself
        # (kombu backs off 2 s, 4 s, ... up to 30 s between tries) and consumes again; the batch that
        # was running cannot acknowledge its messages, which the broker delivers again (Redis: after the
        # visibility timeout, from its AOF). Retrying is Celery's default, but only 100 times (~45 min):
        # retry forever instead, so a worker outlives a long broker outage rather than exiting.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3},
    )
    app.clipfuse_settings = settings  # type: ignore[attr-defined]
    register_tasks(app, settings)
    return app


def settings_of(app: Celery) -> Settings:
    """The settings an app was built from."""
    settings = getattr(app, "clipfuse_settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


#: the app ``celery -A clipfuse.workers.app worker`` runs (settings from the environment)
app = create_app(set_as_current=True)
