"""Issue 11 through the queue: the producer, real workers on Redis, dead letters, --store.

A mixed catalog of bad and good lines gives the same indexed ids through ``clipfuse index``
and through ``clipfuse enqueue`` + a worker; the producer reads and validates the whole
catalog before sending anything; ``clipfuse worker --store DIR`` writes into DIR whatever
the engine; ``dead-letters list`` lists every dead letter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_hostile_catalog import BAD_LINES, check_rejections, stored_ids, write_mixed_catalog
from typer.testing import CliRunner

from clipfuse.cli import app
from clipfuse.schemas import Rejection

pytest_plugins = ["conftest_queue"]
pytestmark = pytest.mark.integration

runner = CliRunner(env={"COLUMNS": "400"})


def _cli_env(env: Any) -> dict[str, str]:
    return {
        "CLIPFUSE_BROKER__URL": env.url,
        "CLIPFUSE_BROKER__QUEUE": env.queue,
        "CLIPFUSE_INDEX": env.index,
        "CLIPFUSE_WORKER__STATE_URL": env.settings().worker.state_url,
    }


def test_enqueue_reads_everything_before_sending(queue_env_factory: Any, tmp_path: Path) -> None:
    """A deep line and a lone surrogate after the first chunk: exit 0, every good document sent, nothing half-done."""
    env = queue_env_factory("redis")
    good = [json.dumps({"id": f"g{i}", "title": f"product {i}"}) for i in range(5)]
    deep = '{"id":"deep","title":"t","attributes":{"a":' + "[" * 100_000 + "]" * 100_000 + "}}"
    surrogate = '{"id":"s\\ud800","title":"bad \\udfff"}'
    catalog = tmp_path / "c.jsonl"
    catalog.write_text("\n".join([good[0], good[1], good[2], deep, good[3], surrogate, good[4]]) + "\n")
    report = tmp_path / "r.json"
    result = runner.invoke(
        app, ["enqueue", str(catalog), "--chunk-size", "2", "--report", str(report)], env=_cli_env(env)
    )
    assert result.exit_code == 0, result.output
    assert "5 documents sent in 3 messages" in result.output and "2 refused" in result.output
    data = json.loads(report.read_text(encoding="utf-8"))
    assert [(r["line"], r["code"]) for r in data["refused"]] == [(4, "too_deep"), (6, "validation")]
    assert data["refused"][1]["id"] == "s\ufffd"
    sent = [doc["id"] for message in env.take_messages() for doc in message["documents"]]
    assert sent == ["g0", "g1", "g2", "g3", "g4"]


def test_an_input_that_fails_midway_sends_nothing(queue_env_factory: Any) -> None:
    from clipfuse.workers.producer import enqueue

    env = queue_env_factory("redis")

    def documents() -> Iterator[dict[str, Any]]:
        for i in range(10):
            yield {"id": f"d{i}", "title": "x"}
        raise OSError("the catalog's disk went away")

    with pytest.raises(OSError):
        enqueue(documents(), settings=env.settings(), app=env.app(), chunk_size=2)
    assert env.depth()[0] == 0  # not one of the five messages the first ten documents fill


def test_dead_letters_list_lists_every_one_unless_limited(queue_env_factory: Any) -> None:
    env = queue_env_factory("redis")
    store = env.dead_letters()
    try:
        store.add([Rejection(id=f"bad-{i:02d}", code="image_unreadable", reason="x", stage="load") for i in range(45)])
    finally:
        store.close()
    listed = runner.invoke(app, ["dead-letters", "list", "--json"], env=_cli_env(env))
    assert listed.exit_code == 0, listed.output
    assert len([line for line in listed.output.splitlines() if line.strip()]) == 45
    limited = runner.invoke(app, ["dead-letters", "list", "--json", "--limit", "7"], env=_cli_env(env))
    assert len(limited.output.splitlines()) == 7
    table = runner.invoke(app, ["dead-letters", "list", "--limit", "5"], env=_cli_env(env))
    assert table.exit_code == 0 and "40 more (--offset 5)" in table.output
    everything = runner.invoke(app, ["dead-letters", "list"], env=_cli_env(env))
    assert "more (--offset" not in everything.output and "bad-00" in everything.output


@pytest.mark.slow
def test_a_mixed_catalog_gives_the_same_ids_through_the_queue_and_index(
    queue_env_factory: Any, demo_catalog: Path, tmp_path: Path
) -> None:
    env = queue_env_factory("redis")
    catalog, good_ids, bad_lines = write_mixed_catalog(tmp_path / "shop", demo_catalog)

    indexed = runner.invoke(app, ["index", str(catalog), "--model", "clipfuse-demo", "--store", str(tmp_path / "edge")])
    assert indexed.exit_code == 0, indexed.output
    through_index = set(stored_ids(tmp_path / "edge"))

    worker = env.start_worker()
    report = tmp_path / "enqueue.json"
    sent = runner.invoke(app, ["enqueue", str(catalog), "--report", str(report)], env=_cli_env(env))
    assert sent.exit_code == 0, sent.output
    refused = json.loads(report.read_text(encoding="utf-8"))["refused"]
    worker.wait_ready()
    env.wait_drained(worker, documents=len(good_ids) + 1, timeout=120)
    store = env.dead_letters()
    try:
        letters = {letter.key: letter.rejection for letter in store.list()}
    finally:
        store.close()
    worker.stop()

    count, ids = env.stored_ids()
    assert set(ids) == through_index == set(good_ids) and count == len(good_ids)
    # the producer refused every bad line but the FIFO, which only a worker can find out
    fifo_line = bad_lines[[code for _, code in BAD_LINES].index("image_not_a_file")]
    check_rejections(
        [*refused, {**letters["fifo"].model_dump(), "line": fifo_line}],
        bad_lines,
    )
    assert set(letters) == {"fifo"} and letters["fifo"].stage == "load"


@pytest.mark.slow
def test_worker_store_is_the_store_of_the_engine_in_use(queue_env_factory: Any, tmp_path: Path) -> None:
    """`clipfuse worker --store DIR` with the default engine (Qdrant Edge) writes into DIR."""
    from conftest_queue import ROOT, Worker

    from clipfuse.plugin.edge import EdgeBackend
    from clipfuse.workers.producer import enqueue

    env = queue_env_factory("redis")
    store = tmp_path / "my-store"
    workdir = tmp_path / "cwd"  # where the old worker wrote instead (./clipfuse-data/edge)
    workdir.mkdir()
    process_env = env.env(CLIPFUSE_BACKEND="<unset>", CLIPFUSE_QDRANT__PATH="<unset>")
    process_env["PYTHONPATH"] = str(ROOT) + os.pathsep + process_env.get("PYTHONPATH", "")
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "clipfuse.cli", "worker", "--store", str(store), "--", "--without-heartbeat"],
            cwd=workdir,
            env=process_env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(process, log_path, time.monotonic())
    env.workers.append(worker)
    docs = [{"id": f"w{i}", "title": f"blue scarf {i}"} for i in range(3)]
    enqueue(docs, settings=env.settings(), app=env.app())
    worker.wait_ready()
    env.wait_drained(worker, documents=3, timeout=90)
    worker.stop()
    assert not (workdir / "clipfuse-data").exists()
    backend = EdgeBackend(store, env.index)
    try:
        assert backend.count() == 3
    finally:
        backend.close()


def test_store_with_a_server_engine_is_refused(tmp_path: Path) -> None:
    env = {"CLIPFUSE_QDRANT__URL": "http://127.0.0.1:1"}
    for argv in (["info"], ["index", str(tmp_path)], ["worker"]):
        result = runner.invoke(app, [*argv, "--store", str(tmp_path / "s")], env=env)
        assert result.exit_code == 2, result.output
        assert "names an embedded store folder" in result.output
