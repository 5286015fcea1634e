"""Guarantee 3: bad documents are dead-lettered alone, with readable reasons; the rest are indexed.

Also the dead-letter workflow end to end: ``clipfuse dead-letters list`` shows them,
``clipfuse dead-letters replay`` re-enqueues one after its cause was fixed, and the
worker indexes it.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
from typer.testing import CliRunner

from clipfuse.schemas import limits as L
from clipfuse.workers.cli import app as queue_cli
from clipfuse.workers.producer import enqueue

pytest_plugins = ["conftest_queue"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bad_documents_are_dead_lettered_alone_and_replayable(
    queue_env_factory: Any, queue_catalog: list[dict[str, Any]], tmp_path: Any
) -> None:
    from conftest_queue import free_port

    env = queue_env_factory("redis")
    good = queue_catalog[60:90]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    closed = free_port()
    bad = [
        {"id": "bad-corrupt", "images": [{"path": str(corrupt)}], "title": "corrupt photo"},
        {"id": "bad-url", "images": [{"url": f"http://127.0.0.1:{closed}/shoe.jpg"}], "title": "unreachable photo"},
        {"id": "bad-missing", "images": [{"path": str(tmp_path / "gone.jpg")}], "title": "deleted photo"},
    ]
    oversized = {"id": "bad-title", "title": "x" * (L.MAX_TITLE_CHARS + 1)}
    mixed = good[:10] + bad[:2] + good[10:20] + bad[2:] + [oversized] + good[20:]

    worker = env.start_worker(CLIPFUSE_IMAGES__ALLOW_PRIVATE_URLS="true", CLIPFUSE_IMAGES__FETCH_TIMEOUT_S="3")
    report = enqueue(mixed, settings=env.settings(), app=env.app(), chunk_size=8)
    # the producer refuses the oversized text itself, with its reason, and sends the rest
    assert [r.id for r in report.refused] == ["bad-title"]
    assert "MAX_TITLE_CHARS" in report.refused[0].reason
    assert report.accepted == 33
    # ... and a worker refuses it too when a client bypasses the producer, as it does garbage
    env.send_raw({"op": "upsert", "documents": [oversized, good[0]], "attempt": 0})
    env.send_raw({"op": "upsert", "documents": "not a list", "attempt": 0})
    worker.wait_ready()
    env.wait_drained(worker, documents=35, timeout=90)

    store = env.dead_letters()
    letters = {letter.key: letter.rejection for letter in store.list(limit=100)}
    try:
        assert set(letters) - {k for k in letters if k.startswith("~")} == {
            "bad-corrupt",
            "bad-url",
            "bad-missing",
            "bad-title",
        }
        assert [r.code for k, r in letters.items() if k.startswith("~")] == ["bad_message"]
        assert letters["bad-corrupt"].code == "image_unreadable" and "corrupt" in letters["bad-corrupt"].reason
        assert letters["bad-url"].code == "image_unreachable" and "unreachable" in letters["bad-url"].reason
        assert letters["bad-missing"].code == "image_not_found" and "not found" in letters["bad-missing"].reason
        assert letters["bad-title"].stage == "validate" and "MAX_TITLE_CHARS" in letters["bad-title"].reason
        assert all(r.stage == "load" for k, r in letters.items() if k in ("bad-corrupt", "bad-url", "bad-missing"))
        assert letters["bad-corrupt"].document is not None  # kept for replay

        runner = CliRunner(env={"COLUMNS": "400"})
        listed = runner.invoke(queue_cli, ["dead-letters", "list", "--index", env.index, "--json"], env=_cli_env(env))
        assert listed.exit_code == 0, listed.output
        rows = [json.loads(line) for line in listed.output.splitlines() if line.strip()]
        assert {row["key"] for row in rows} == set(letters)

        # fix the cause (the photo is restored) and replay that one document
        shutil.copy(good[0]["images"][0]["path"], corrupt)
        replayed = runner.invoke(
            queue_cli, ["dead-letters", "replay", "--id", "bad-corrupt", "--index", env.index], env=_cli_env(env)
        )
        assert replayed.exit_code == 0, replayed.output
        assert "1 re-enqueued" in replayed.output
        env.wait_drained(worker, documents=37, timeout=60)
        remaining = {letter.key for letter in store.list(limit=100)}
        stats = store.stats()
    finally:
        store.close()
    worker.stop()

    assert "bad-corrupt" not in remaining and {"bad-url", "bad-missing", "bad-title"} <= remaining
    count, ids = env.stored_ids()
    assert set(ids) == {d["id"] for d in good} | {"bad-corrupt"}
    assert count == len(good) + 1
    print(
        f"\n[redis] {len(mixed)} documents + 2 raw messages: producer refused 1 (oversized title); workers indexed "
        f"{len(good)} and dead-lettered {len(letters)} ({', '.join(sorted(r.code for r in letters.values()))}); "
        f"after the fix, replay indexed bad-corrupt ({stats['indexed']} writes in all)"
    )


def _cli_env(env: Any) -> dict[str, str]:
    return {
        "CLIPFUSE_BROKER__URL": env.url,
        "CLIPFUSE_BROKER__QUEUE": env.queue,
        "CLIPFUSE_WORKER__STATE_URL": env.settings().worker.state_url,
    }
