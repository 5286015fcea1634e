"""``clipfuse bench``: a tiny run on the shipped demo model; the figures exist and agree with each other."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from clipfuse.bench.cli import register
from clipfuse.bench.images import synthetic_jpegs

TINY = [
    "bench",
    "--model",
    "clipfuse-demo",
    "--device",
    "cpu",
    "-n",
    "24",
    "-b",
    "8",
    "--unique-images",
    "6",
    "--workers",
    "1",
    "--load-workers",
    "2",
    "--texts",
    "32",
    "--query-docs",
    "300",
    "--queries",
    "8",
    "--repeats",
    "1",
]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command, so "bench" is a subcommand as in clipfuse
    register(app)
    return app


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    outcome = CliRunner(env={"COLUMNS": "400"}).invoke(_app(), [*TINY, "--json", "--quiet"])
    assert outcome.exit_code == 0, outcome.output
    return json.loads(outcome.stdout)


def test_figures_are_there_and_positive(result: dict[str, Any]) -> None:
    thr = result["throughput"]
    for name in (
        "model_only_images_per_s",
        "model_only_texts_per_s",
        "model_only_documents_per_s",
        "pipeline_images_per_s",
        "device_pipeline_images_per_s",
        "baseline_images_per_s",
        "ingest_documents_per_s",
        "embed_texts_per_s",
        "bm25_texts_per_s",
    ):
        assert isinstance(thr[name], float) and math.isfinite(thr[name]) and thr[name] > 0, name
    # both towers per document cannot be faster than either tower alone
    assert thr["model_only_documents_per_s"] < min(thr["model_only_images_per_s"], thr["model_only_texts_per_s"])
    assert result["config"]["model"] == "clipfuse-demo" and result["config"]["device_resolved"] == "cpu"
    assert result["environment"]["model_input"] == 64
    assert "800x600" in result["environment"]["image_sizes"]


def test_ratios_match_the_throughputs(result: dict[str, Any]) -> None:
    thr, ratios = result["throughput"], result["ratios"]
    assert ratios["pipeline_vs_model_only"] == pytest.approx(
        thr["pipeline_images_per_s"] / thr["model_only_images_per_s"], rel=1e-2
    )
    assert ratios["pipeline_vs_baseline"] == pytest.approx(
        thr["pipeline_images_per_s"] / thr["baseline_images_per_s"], rel=1e-2
    )
    assert ratios["ingest_vs_model_only_documents"] == pytest.approx(
        thr["ingest_documents_per_s"] / thr["model_only_documents_per_s"], rel=1e-2
    )
    assert all(value > 0 for value in ratios.values())
    cpu, cpu_ratios = result["per_cpu_second"], result["cpu_ratios"]
    assert all(value > 0 for value in cpu.values())
    assert cpu_ratios["pipeline_vs_model_only"] == pytest.approx(
        cpu["pipeline_images"] / cpu["model_only_images"], rel=1e-2
    )
    assert cpu_ratios["ingest_vs_model_only_documents"] == pytest.approx(
        cpu["ingest_documents"] / cpu["model_only_documents"], rel=1e-2
    )
    # on the CPU a phase cannot do more items per CPU second than per wall second times the cores in use
    assert thr["pipeline_images_per_s"] <= cpu["pipeline_images"] * (result["environment"]["cpu_count"] or 1) * 1.1


def test_stage_breakdown(result: dict[str, Any]) -> None:
    stages = result["stages_ms_per_image"]
    for phase in ("pipeline", "ingest"):
        for name in ("read", "decode", "preprocess", "load", "embed_images", "upsert"):
            assert stages[phase][name] >= 0, (phase, name)
        assert stages[phase]["decode"] > 0 and stages[phase]["embed_images"] > 0
    assert stages["ingest"]["embed_texts"] > 0 and stages["ingest"]["bm25"] > 0
    # a phase's main-thread stages cannot add up to more than its wall time per image
    per_image_ms = 1000 / result["throughput"]["pipeline_images_per_s"]
    main_thread = sum(v for k, v in stages["pipeline"].items() if k not in ("read", "decode", "preprocess"))
    assert main_thread <= per_image_ms * 1.05


def test_query_latency(result: dict[str, Any]) -> None:
    query = result["query"]
    assert query["documents"] == 300
    assert 0 < query["p50_ms"] <= query["p95_ms"]
    assert 0 < query["encode_p50_ms"] <= query["encode_p95_ms"]
    # every text path side by side, with and without a busy core; the default is the service's
    assert set(query["encoders"]) == set(query["busy_core"]) == {"torch", "torch-1t", "onnx", "onnx-int8"}
    assert query["default_encoder"] == "onnx" and query["p50_ms"] == query["encoders"]["onnx"]["p50_ms"]
    for row in [*query["encoders"].values(), *query["busy_core"].values(), query["cache_hit"]]:
        assert 0 < row["p50_ms"] <= row["p95_ms"]
    assert query["cosine_to_torch_min"]["onnx"] >= 0.99999 and query["cosine_to_torch_min"]["onnx-int8"] >= 0.99
    assert query["cache_hit"]["hits"] >= query["queries"] and query["cache_hit"]["encode_p50_ms"] < 1
    engine = query["engine"]["search_with_vector"]
    assert 0 < engine["p50_ms"] <= engine["p95_ms"]
    assert all(v >= 0 for v in query["breakdown_ms_p50"].values()) and query["breakdown_ms_p50"]["text_tower"] > 0
    assert all(isinstance(x, float) for x in query["load_average"]["busy_core"])


def test_device_decode_pipeline(result: dict[str, Any]) -> None:
    assert result["device_pipeline"]["decoded_on_device_share"] == 1.0  # the bench's photos are baseline JPEGs
    ratio = result["ratios"]["device_pipeline_vs_baseline"]
    thr = result["throughput"]
    assert ratio == pytest.approx(thr["device_pipeline_images_per_s"] / thr["baseline_images_per_s"], rel=1e-2)


def test_human_output_has_the_tables() -> None:
    outcome = CliRunner(env={"COLUMNS": "400"}).invoke(
        _app(), [*TINY[:-8], "--query-docs", "0", "--no-ingest", "--no-baseline", "-n", "8", "--repeats", "1"]
    )
    assert outcome.exit_code == 0, outcome.output
    for text in ("model only, image tower", "pipeline: JPEG files -> vectors", "pipeline / model only", "decode"):
        assert text in outcome.stdout


def test_generated_photos_are_realistic_and_deterministic() -> None:
    first, second = synthetic_jpegs(3, seed=1), synthetic_jpegs(3, seed=1)
    assert first == second and len(set(first)) == 3
    assert all(30_000 < len(b) < 300_000 for b in first)
