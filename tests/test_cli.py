"""The command line, as a user runs it: index, search, info, delete, demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clipfuse.cli import app

runner = CliRunner(env={"COLUMNS": "400"})


@pytest.fixture
def store(tmp_path: Path, demo_catalog: Path) -> Path:
    path = tmp_path / "store"
    result = runner.invoke(app, ["index", str(demo_catalog), "--model", "clipfuse-demo", "--store", str(path)])
    assert result.exit_code == 0, result.output
    assert "60 indexed" in result.output and "0 rejected" in result.output
    return path


def _search(store: Path, *args: str) -> Any:
    result = runner.invoke(app, ["search", *args, "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_hits_table_reads_at_80_columns(store: Path) -> None:
    """Piped or on an 80-column terminal, no attribute is folded mid-word (``material=woo`` / ``l``):
    the attributes go under the title, cut at a whole ``key=value``."""
    hits = _search(store, "red leather", "--k", "5")["hits"]
    result = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["search", "red leather", "--k", "5", "--store", str(store)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    values = {k: {str(h["payload"][k]) for h in hits} for h in hits for k in h["payload"]}
    printed = re.findall(r"(\w+)=([^,…\n]*)", result.output)
    assert len(printed) >= len(hits)  # at least one attribute per hit
    for key, value in printed:
        # the whole value, or its first words when the line ends inside it
        assert any(v == value.strip() or v.startswith(value.strip() + " ") for v in values[key]), (key, value)
    for hit in hits:
        assert hit["id"] in result.output and hit["payload"]["title"].split()[0] in result.output
    nothing = runner.invoke(app, ["search", "red", "--filter", "price<0", "--store", str(store)])
    assert nothing.exit_code == 0 and "no hits" in nothing.output and "┏" not in nothing.output  # no empty table


def test_an_edge_store_opened_by_qdrant_client_stays_edge(store: Path) -> None:
    """QdrantClient(path=<the demo's Edge store>) writes an empty meta.json into it; the folder must
    not turn into an empty qdrant-client store for every later command ("index 'products' does not exist")."""
    from qdrant_client import QdrantClient

    QdrantClient(path=str(store)).close()
    assert (store / "meta.json").is_file()
    info = runner.invoke(app, ["info", "--store", str(store)])
    assert info.exit_code == 0, info.output
    assert "qdrant-edge" in info.output and "60 documents" in info.output


def test_a_missing_index_points_at_the_demo_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After `clipfuse demo`, `clipfuse search` without --store finds no index: it says where the demo's is."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIPFUSE_EDGE__PATH", raising=False)
    for argv in (["search", "red boots"], ["info"]):
        result = runner.invoke(app, argv)
        assert result.exit_code != 0 and "does not exist yet" in result.output and "--store" not in result.output
    (tmp_path / "clipfuse-data" / "demo" / "store").mkdir(parents=True)
    for argv in (["search", "red boots"], ["info"]):
        result = runner.invoke(app, argv)
        assert result.exit_code != 0, result.output
        assert "add --store clipfuse-data/demo/store" in result.output


def test_search_json_has_per_signal_scores(store: Path) -> None:
    response = _search(store, "red striped t-shirt", "--k", "5")
    assert len(response["hits"]) == 5
    top = response["hits"][0]
    assert set(top["signals"]) == {"image", "text", "bm25"}
    assert top["payload"]["title"]
    assert [h["rank"] for h in response["hits"]] == [1, 2, 3, 4, 5]


def test_search_uses_the_model_recorded_in_the_index(store: Path) -> None:
    # no --model: the index says clipfuse-demo, so no weights download is attempted
    assert _search(store, "blue scarf", "--k", "3")["hits"]


def test_search_filters_fusion_weights_paging(store: Path) -> None:
    cheap = _search(store, "boots", "--filter", "price<=60", "--filter", "in_stock=true", "--k", "20")
    assert cheap["hits"] and all(h["payload"]["price"] <= 60 and h["payload"]["in_stock"] for h in cheap["hits"])
    dbsf = _search(store, "boots", "--fusion", "dbsf", "--weights", "image=1,text=0,bm25=2", "--k", "4")
    assert dbsf["fusion"] == "dbsf" and all(h["signals"]["text"] is None for h in dbsf["hits"])
    page2 = _search(store, "boots", "--k", "3", "--offset", "3")
    assert [h["rank"] for h in page2["hits"]] == [4, 5, 6]


def test_search_shop_options_facets_collapse_boost_rules_cursor(
    store: Path, demo_catalog: Path, tmp_path: Path
) -> None:
    docs = [json.loads(line) for line in demo_catalog.read_text().splitlines() if line.strip()]
    pinned = docs[5]["id"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"rules:\n  - id: pin-it\n    conditions: [{{pattern: boots, anchoring: contains}}]\n"
        f"    consequence: {{pin: [{{id: {pinned}, position: 1}}]}}\n"
    )
    args = ["boots", "--k", "3", "--facet", "brand", "--collapse", "group_id", "--boost", "log1p(popularity)*0.1"]
    first = _search(store, *args, "--rules", str(rules))
    assert first["hits"][0]["id"] == pinned and first["hits"][0]["rule"] == "pin-it"
    assert first["facets"]["brand"] and first["collapsed_by"] == "group_id"
    assert first["hits"][1]["explanation"]["boosts"][0]["boost"] == "log1p(popularity) * 0.1"
    # the cursor survives the process: the next command continues the frozen ranking
    second = _search(store, "--cursor", first["next_cursor"])
    assert [h["rank"] for h in second["hits"]] == [4, 5, 6]
    assert not {h["id"] for h in first["hits"]} & {h["id"] for h in second["hits"]}
    table = runner.invoke(app, ["search", *args, "--explain", "--store", str(store)])
    assert table.exit_code == 0 and "brand" in table.output and "--cursor" in table.output
    bad = runner.invoke(app, ["search", "boots", "--boost", "log1p(brand)", "--store", str(store)])
    assert bad.exit_code != 0 and "needs a number field" in bad.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - id: x\n    conditions: [{pattern: boots}]\n    consequence: {hide: [nope]}\n")
    bad = runner.invoke(app, ["search", "boots", "--rules", str(broken), "--store", str(store)])
    assert bad.exit_code != 0 and "names documents the index does not hold" in bad.output


def test_search_by_image(store: Path, demo_catalog: Path) -> None:
    first = json.loads(demo_catalog.read_text().splitlines()[0])
    image = demo_catalog.parent / first["images"][0]["path"]
    response = _search(store, "--image", str(image), "--k", "3")
    assert response["hits"][0]["id"] == first["id"]


def test_search_errors_are_readable(store: Path) -> None:
    result = runner.invoke(app, ["search", "boots", "--filter", "size=M", "--store", str(store)])
    assert result.exit_code == 2 and "unknown filter field 'size'" in result.output
    result = runner.invoke(app, ["search", "--store", str(store)])
    assert result.exit_code == 2 and "neither" in result.output
    result = runner.invoke(app, ["search", "boots", "--filter", "price<<3", "--store", str(store)])
    assert result.exit_code == 2 and "cannot read filter" in result.output


def test_info_and_delete(store: Path, demo_catalog: Path) -> None:
    result = runner.invoke(app, ["info", "--store", str(store)])
    assert result.exit_code == 0 and "60 documents" in result.output and "price (number)" in result.output
    assert "qdrant-edge" in result.output  # the embedded default engine
    first = json.loads(demo_catalog.read_text().splitlines()[0])["id"]
    assert runner.invoke(app, ["delete", first, "--store", str(store)]).exit_code == 0
    assert "59 documents" in runner.invoke(app, ["info", "--store", str(store)]).output


def test_optimize_builds_the_edge_index_once(store: Path) -> None:
    from clipfuse.plugin.edge import EdgeBackend

    result = runner.invoke(app, ["optimize", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "index already up to date" in result.output  # `clipfuse index` built it already
    backend = EdgeBackend(store, "products")
    try:
        assert backend.stats()["points"] == 60
    finally:
        backend.close()


def test_optimize_is_a_declared_capability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edge declares Optimizable and Stats; a qdrant-client store builds its index by itself."""
    from qdrant_client import QdrantClient

    from clipfuse.plugin.edge import EdgeBackend
    from clipfuse.plugin.protocol import Optimizable, Stats
    from clipfuse.plugin.qdrant import QdrantBackend

    edge = EdgeBackend(tmp_path / "edge", "products")
    qdrant = QdrantBackend(QdrantClient(location=":memory:"), "products")
    try:
        assert isinstance(edge, Optimizable) and isinstance(edge, Stats)
        assert not isinstance(qdrant, Optimizable) and not isinstance(qdrant, Stats)
    finally:
        edge.close()
        qdrant.close()
    monkeypatch.setenv("CLIPFUSE_BACKEND", "qdrant")
    result = runner.invoke(app, ["optimize", "--store", str(tmp_path / "qdrant")])
    assert result.exit_code == 0, result.output
    assert "builds its index by itself: nothing to do" in result.output


def test_store_engine_resolution(tmp_path: Path, demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipfuse.settings import Settings

    for var in ("CLIPFUSE_BACKEND", "CLIPFUSE_QDRANT__URL"):
        monkeypatch.delenv(var, raising=False)
    assert Settings().engine == "qdrant-edge"
    assert Settings(qdrant={"url": "http://qdrant:6333"}).engine == "qdrant"  # a server by URL
    assert Settings(backend="qdrant").embedded_store == Path("clipfuse-data/qdrant")
    # a folder that holds a qdrant-client local store stays on qdrant-client, end to end
    legacy = tmp_path / "legacy"
    monkeypatch.setenv("CLIPFUSE_BACKEND", "qdrant")
    result = runner.invoke(app, ["index", str(demo_catalog), "--model", "clipfuse-demo", "--store", str(legacy)])
    assert result.exit_code == 0, result.output
    assert (legacy / "meta.json").is_file()
    monkeypatch.delenv("CLIPFUSE_BACKEND")
    assert Settings().with_store(legacy).engine == "qdrant"
    info = runner.invoke(app, ["info", "--store", str(legacy)])
    assert info.exit_code == 0 and "(qdrant, " in info.output and "60 documents" in info.output
    optimize = runner.invoke(app, ["optimize", "--store", str(legacy)])
    assert optimize.exit_code == 0 and "nothing to do" in optimize.output


def test_index_a_folder_of_images_with_a_bad_file(tmp_path: Path, demo_catalog: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(demo_catalog.parent / "images", folder)
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    report = tmp_path / "report.json"
    result = runner.invoke(
        app, ["index", str(folder), "--model", "clipfuse-demo", "--store", str(tmp_path / "s"), "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["indexed"] == 60
    assert [(r["id"], r["code"]) for r in data["rejected"]] == [("broken.jpg", "image_unreadable")]


def test_a_line_that_is_not_json_is_rejected_alone_with_its_line(tmp_path: Path, demo_catalog: Path) -> None:
    catalog = tmp_path / "catalog.jsonl"
    lines = demo_catalog.read_text().splitlines()[:3]
    catalog.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    shutil.copytree(demo_catalog.parent / "images", tmp_path / "images")
    report = tmp_path / "report.json"
    result = runner.invoke(
        app,
        ["index", str(catalog), "--model", "clipfuse-demo", "--store", str(tmp_path / "s"), "--report", str(report)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["indexed"] == 3
    [bad] = data["rejected"]
    assert (bad["id"], bad["code"], bad["position"]) == ("catalog.jsonl:line2", "invalid_json", 1)
    assert bad["reason"].startswith("line 2 is not JSON")


def test_missing_catalog_and_help() -> None:
    result = runner.invoke(app, ["index", "/no/such/catalog.jsonl", "--model", "clipfuse-demo"])
    assert result.exit_code == 2 and "does not exist" in result.output
    for command in (
        "index",
        "search",
        "demo",
        "info",
        "delete",
        "optimize",
        "serve",
        "worker",
        "enqueue",
        "status",
        "eval",
        "bench",
    ):
        help_text = runner.invoke(app, [command, "--help"]).output
        assert "Usage" in help_text and "--" in help_text


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("clipfuse")
    proc = subprocess.run(
        [str(exe), "demo", "--dir", str(tmp_path / "demo"), "--size", "120"],
        env={**os.environ, "COLUMNS": "400"},  # no line wrapped: the assertions read whole lines
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "120 indexed" in out and "2 rejected" in out
    assert "broken-image" in out and "missing-image" in out
    assert "text->image R@10" in out and "hybrid" in out
    assert "text: '" in out and "image + text" in out and "text + filter" in out
    assert "rrf fusion by the client" in out  # on Edge clipfuse fuses, by default (EdgeBackend(engine_fusion=False))
    assert "group_id" in out and "brand: " in out and "log1p" in out and "--cursor c1." in out  # shop page
    assert "rules: backpack-week" in out and "variants" in out
