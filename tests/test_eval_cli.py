"""``clipfuse eval`` end to end on a small noisy demo catalog (embedded store in a temp dir, demo model on CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from clipfuse.eval.cli import register

pytest.importorskip("matplotlib")

SIZE = 60
QUERIES = 24


@pytest.fixture(scope="module")
def eval_app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:  # a second command keeps "eval" a named subcommand
        pass

    return app


@pytest.fixture(scope="module")
def demo_run(eval_app: typer.Typer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    directory = tmp_path_factory.mktemp("eval-demo")
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        eval_app,
        [
            "eval",
            "--demo",
            "--size",
            str(SIZE),
            "--n-queries",
            str(QUERIES),
            "--dir",
            str(directory),
            "--tune",
            "--budget",
            "20",
            "--depth",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    return directory, json.loads((directory / "eval.json").read_text()), result.output


def test_demo_eval_writes_table_json_chart(demo_run: tuple[Path, dict[str, Any], str]) -> None:
    directory, report, output = demo_run
    assert report["documents"] == SIZE and report["queries"] == QUERIES
    assert report["split"]["dev"] + report["split"]["held_out"] == QUERIES
    names = [c["name"] for c in report["configs"]]
    assert names == [
        "image vector",
        "text vector",
        "BM25",
        "RRF k=60",
        "min-max linear",
        "z-score linear",
        "DBSF",
        "tuned",
    ]
    for config in report["configs"]:
        assert config["queries"] == report["split"]["held_out"]
        assert all(0.0 <= v <= 1.0 for v in config["metrics"].values())
        assert len(config["recall_curve"]) == 50
    tuning = report["tuning"]
    assert tuning["tried"] == 20 and tuning["budget"] == 20
    assert tuning["dev_score"] == max(t["dev_score"] for t in tuning["trials"])
    assert tuning["cli"].startswith("--fusion ") and "--weights image=" in tuning["cli"]
    assert tuning["python"].startswith("SearchRequest(")
    # the table is printed with every configuration and the tuned setting in both forms
    for name in ("image vector", "BM25", "DBSF", "tuned"):
        assert name in output
    assert "clipfuse search 'QUERY' --fusion" in output
    # variant groups: colour variants share the top 10 without collapse, not with it
    groups = report["distinct_groups_top10"]
    assert groups["queries"] > 0 and groups["without_collapse"] < groups["with_collapse"] <= 10
    assert "distinct products (group_id) in the top 10" in output
    png = directory / "eval.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (directory / "eval.md").read_text().startswith("| configuration |")
    # the generated inputs are on disk, in the documented formats
    assert (directory / "qrels.tsv").read_text().split("\n")[0].split()[1] == "0"
    assert len((directory / "queries.jsonl").read_text().splitlines()) == QUERIES


def test_eval_on_existing_index_with_queries_and_qrels(
    demo_run: tuple[Path, dict[str, Any], str], eval_app: typer.Typer, tmp_path: Path
) -> None:
    directory, _, _ = demo_run
    qrels = tmp_path / "qrels.tsv"
    lines = (directory / "qrels.tsv").read_text().splitlines()
    qrels.write_text("\n".join([*lines, "q-unknown 0 nowhere 1", "q0001 0 not-a-product 2"]) + "\n")
    out = tmp_path / "r" / "report.json"
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        eval_app,
        [
            "eval",
            "--queries",
            str(directory / "queries.jsonl"),
            "--qrels",
            str(qrels),
            "--store",
            str(directory / "store"),
            "--weights",
            "image=2,text=1,bm25=1",
            "--rrf-k",
            "10",
            "--json",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report == json.loads(out.read_text())
    assert (tmp_path / "r" / "report.png").is_file()
    assert report["evaluated_on"] == "all queries" and report["coverage"]["evaluated"] == QUERIES
    assert report["coverage"]["judged_queries_not_run"] == ["q-unknown"]
    names = [c["name"] for c in report["configs"]]
    assert "weighted RRF k=10" in names and "RRF k=10" in names
    weighted = next(c for c in report["configs"] if c["name"] == "weighted RRF k=10")
    assert weighted["weights"] == {"image": 2.0, "text": 1.0, "bm25": 1.0}
    assert isinstance(report["fused_beats_single"], bool)


def test_eval_runs_equal_hybrid_searcher_results(demo_run: tuple[Path, dict[str, Any], str]) -> None:
    """The runner's fused rankings are what HybridSearcher.search returns for the same request."""
    from clipfuse.console import settings_from_options as _settings
    from clipfuse.eval.loaders import load_queries
    from clipfuse.eval.runner import RunConfig, collect_signals, rank
    from clipfuse.factory import build_backend, build_searcher
    from clipfuse.schemas import Weights

    directory, _, _ = demo_run
    queries = load_queries(directory / "queries.jsonl")[:8]
    settings = _settings("clipfuse-demo", None, directory / "store")
    backend = build_backend(settings)
    try:
        searcher = build_searcher(settings, backend=backend)
        signals = collect_signals(searcher, queries, depth=20)
        configs = [
            RunConfig("lin", "linear", Weights(image=2, text=1, bm25=0.5)),
            RunConfig("z", "zscore", Weights(image=1, text=1, bm25=1)),
            RunConfig("rrf", "rrf", Weights(image=1, text=0.5, bm25=2), 7.5),  # non-integer k: fused by clipfuse
            RunConfig("img", "rrf", Weights(image=1, text=0, bm25=0), 60.0),
        ]
        compared = 0
        for query in queries:
            for config in configs:
                if query.text is None and config.weights.image == 0 and config.weights.text == 0:
                    continue
                response = searcher.search(query.request(k=20, **config.request_fields()))
                assert rank(signals.lists[query.id], config, 20) == [h.id for h in response.hits], (query, config)
                compared += 1
        assert compared >= len(queries) * 3
    finally:
        backend.close()


def test_eval_rejects_bad_arguments(eval_app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "400"})
    result = runner.invoke(eval_app, ["eval"])
    assert result.exit_code == 2 and "exactly one of" in result.output
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "q1", "text": "red dress"}\n')
    result = runner.invoke(eval_app, ["eval", "--queries", str(queries), "--qrels", str(tmp_path / "missing.tsv")])
    assert result.exit_code == 2 and "does not exist" in result.output
