"""The queue commands: `clipfuse worker` (its command line), `enqueue`, `status`, `dead-letters`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clipfuse.workers.cli import app, worker_command

pytest_plugins = ["conftest_queue"]

runner = CliRunner(env={"COLUMNS": "400"})


def test_worker_command_wraps_celery_with_safe_defaults() -> None:
    argv, env = worker_command(
        {"CLIPFUSE_BROKER__QUEUE": "shop", "CLIPFUSE_MODEL__DEVICE": "cuda:1", "CLIPFUSE_BATCH_SIZE": 256},
        extra=["--max-tasks-per-child", "0"],
    )
    assert argv[1:6] == ["-m", "celery", "-A", "clipfuse.workers.app", "worker"]
    joined = " ".join(argv)
    assert "--pool solo" in joined and "--concurrency 1" in joined and "-Q shop" in joined
    assert "-n clipfuse-cuda1@%h" in joined and argv[-2:] == ["--max-tasks-per-child", "0"]
    assert env["CLIPFUSE_MODEL__DEVICE"] == "cuda:1" and env["CLIPFUSE_BATCH_SIZE"] == "256"


@pytest.mark.parametrize(
    "command", [["worker"], ["enqueue"], ["status"], ["dead-letters", "list"], ["dead-letters", "replay"]]
)
def test_help_texts(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_worker_refuses_prefork() -> None:
    result = runner.invoke(app, ["worker", "--pool", "prefork"])
    assert result.exit_code == 2 and "prefork" in result.output


@pytest.mark.integration
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_enqueue_then_status(broker: str, tmp_path: Path) -> None:
    from conftest_queue import BROKER_URLS, REDIS_URL, _cleanup_amqp_queue, _cleanup_redis_queue, require_broker

    require_broker(broker)
    require_broker("redis")
    name = f"cfq-cli-{uuid.uuid4().hex[:8]}"
    catalog = tmp_path / "catalog.jsonl"
    (tmp_path / "img").mkdir()
    lines: list[Any] = [
        {"id": f"d{i}", "title": f"product {i}", "images": [{"path": f"img/{i}.jpg"}]} for i in range(5)
    ]
    catalog.write_text("\n".join([*(json.dumps(d) for d in lines), "{not json", json.dumps({"id": "empty"})]) + "\n")
    env = {
        "CLIPFUSE_BROKER__URL": BROKER_URLS[broker],
        "CLIPFUSE_BROKER__QUEUE": name,
        "CLIPFUSE_INDEX": name,
        "CLIPFUSE_WORKER__STATE_URL": REDIS_URL,
    }
    try:
        sent = runner.invoke(
            app, ["enqueue", str(catalog), "--chunk-size", "2", "--report", str(tmp_path / "r.json")], env=env
        )
        assert sent.exit_code == 0, sent.output
        assert "5 documents sent in 3 messages" in sent.output and "2 refused" in sent.output
        report = json.loads((tmp_path / "r.json").read_text())
        assert [(r["position"], r["code"]) for r in report["refused"]] == [(5, "invalid_json"), (6, "validation")]
        status = runner.invoke(app, ["status", "--json"], env=env)
        assert status.exit_code == 0, status.output
        out = json.loads(status.output)
        assert out["queue_depth"]["pending"] == 3
        assert out["counters"]["enqueued"] == 5 and out["counters"]["refused"] == 2
        assert out["dead_letters"] == 0
        listed = runner.invoke(app, ["dead-letters", "list"], env=env)
        assert (
            listed.exit_code == 0 and f"no dead letters for index {name}" in listed.output
        )  # none yet: no empty table
    finally:
        (_cleanup_redis_queue if broker == "redis" else _cleanup_amqp_queue)(BROKER_URLS[broker], name)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"clipfuse:{name}:*"))
        if keys:
            client.delete(*keys)
        client.close()
