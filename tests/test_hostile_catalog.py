"""Issue 11 end to end: a catalog of bad and good lines indexed by ``clipfuse index``.

Every good document lands, every bad line is one rejection with its line, code and reason,
the process exits 0 and the report is valid UTF-8 JSON. The same catalog through the
queue (a real worker on Redis) is in tests/test_hostile_queue.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clipfuse.cli import app

runner = CliRunner(env={"COLUMNS": "400"})

#: (what the line is, its code) in the order written, after the good ones
BAD_LINES: list[tuple[str, str]] = [
    ("nested 100,000 deep", "too_deep"),
    ("lone surrogate in the title", "validation"),
    ("lone surrogate in the id", "validation"),
    ("a byte that is not UTF-8", "invalid_utf8"),
    ("image path is a FIFO", "image_not_a_file"),
    ("an id that is rich markup", "validation"),
    ("not an object", "validation"),
    ("an integer of 5,000 digits", "invalid_json"),
    ("not JSON", "invalid_json"),
]


def write_mixed_catalog(folder: Path, demo_catalog: Path, *, good: int = 6) -> tuple[Path, list[str], list[int]]:
    """A catalog with ``good`` demo products and one line per BAD_LINES entry between them.

    Returns (catalog, the good ids, the line number of each bad line in BAD_LINES order).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        shutil.copytree(demo_catalog.parent / "images", folder / "images")
    fifo = folder / "images" / "fifo.jpg"
    if not fifo.exists():
        os.mkfifo(fifo)
    goods = [line.encode() for line in demo_catalog.read_text().splitlines()[:good]]
    bads = [
        b'{"id":"deep","title":"t","attributes":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b'{"id":"sur-title","title":"bad \\ud800 title"}',
        b'{"id":"bad \\udfff id","title":"lone surrogate id"}',
        b'{"id":"latin1","title":"caf\xe9"}',
        b'{"id":"fifo","title":"a pipe","images":[{"path":"images/fifo.jpg"}]}',
        b'{"id":"[/x] markup [bold]"}',
        b"[1, 2, 3]",
        b'{"id":"bigint","title":"n","attributes":{"n":' + b"9" * 5000 + b"}}",
        b"{not json",
    ]
    assert len(bads) == len(BAD_LINES)
    lines: list[bytes] = []
    bad_lines: list[int] = []
    for i, bad in enumerate(bads):
        if i < len(goods):
            lines.append(goods[i])
        lines.append(b"")  # blank lines are skipped, not documents
        lines.append(bad)
        bad_lines.append(len(lines))
    lines.extend(goods[len(bads) :])
    catalog = folder / "catalog.jsonl"
    catalog.write_bytes(b"\n".join(lines) + b"\n")
    ids = [json.loads(g)["id"] for g in goods]
    return catalog, ids, bad_lines


def check_rejections(rejected: list[dict[str, Any]], bad_lines: list[int], *, key: str = "line") -> None:
    got = sorted(((r[key], r["code"]) for r in rejected), key=lambda x: x[0])
    assert got == [(line, code) for line, (_, code) in zip(bad_lines, BAD_LINES, strict=True)], got
    for r in rejected:
        assert r["reason"] and r["stage"] in ("validate", "load")


def test_a_mixed_catalog_indexes_every_good_document(tmp_path: Path, demo_catalog: Path) -> None:
    catalog, good_ids, bad_lines = write_mixed_catalog(tmp_path / "shop", demo_catalog)
    report = tmp_path / "report.json"
    store = tmp_path / "store"
    result = runner.invoke(
        app, ["index", str(catalog), "--model", "clipfuse-demo", "--store", str(store), "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    raw = report.read_bytes()
    data = json.loads(raw.decode("utf-8"))  # valid UTF-8 JSON whatever the input held
    assert data["indexed"] == len(good_ids)
    check_rejections(data["rejected"], bad_lines)
    by_code = {r["code"]: r for r in data["rejected"]}
    assert by_code["too_deep"]["id"] == "catalog.jsonl:line" + str(bad_lines[0])
    assert by_code["image_not_a_file"]["id"] == "fifo"
    ids = {r["id"] for r in data["rejected"]}
    assert "bad \ufffd id" in ids and "[/x] markup [bold]" in ids
    # the table printed every rejection, markup and surrogates included
    assert "[/x] markup [bold]" in result.output
    assert sorted(stored_ids(store)) == sorted(good_ids)


def stored_ids(store: Path, index: str = "products") -> list[str]:
    from clipfuse.plugin.edge import EdgeBackend

    backend = EdgeBackend(store, index)
    try:
        return sorted(str(p["doc_id"]) for p in backend.sample_payloads(["doc_id"], 10_000))
    finally:
        backend.close()


@pytest.mark.parametrize("what", ["report", "table"])
def test_reports_and_tables_survive_a_surrogate_in_a_rejection(tmp_path: Path, what: str) -> None:
    """The rejection carries the raw document (for replay): writing and printing it must not raise."""
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id":"ok","title":"red scarf"}\n{"id":"s","title":"bad \\ud800","caption":"x"}\n')
    report = tmp_path / "r.json"
    argv = ["index", str(catalog), "--model", "clipfuse-demo", "--store", str(tmp_path / "s")]
    result = runner.invoke(app, [*argv, "--report", str(report)] if what == "report" else argv)
    assert result.exit_code == 0, result.output
    written = report if what == "report" else tmp_path / "last-index-report.json"
    data = json.loads(written.read_text(encoding="utf-8"))
    [rejection] = data["rejected"]
    assert rejection["document"]["title"] == "bad \ufffd" and rejection["line"] == 2


def test_index_into_an_existing_index_uses_the_model_it_records(
    tmp_path: Path, demo_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLIPFUSE_MODEL__NAME", raising=False)
    store = tmp_path / "store"
    first = runner.invoke(app, ["index", str(demo_catalog), "--model", "clipfuse-demo", "--store", str(store)])
    assert first.exit_code == 0, first.output
    catalog = tmp_path / "more.jsonl"
    catalog.write_text('{"id": "extra-1", "title": "green wool scarf"}\n')
    again = runner.invoke(app, ["index", str(catalog), "--store", str(store)])  # no --model: the recorded one
    assert again.exit_code == 0, again.output
    assert "1 indexed" in again.output
    assert "extra-1" in stored_ids(store)
