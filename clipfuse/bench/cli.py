"""``clipfuse bench``: mounted into the main command by :func:`register`.

Also runnable alone: ``python -m clipfuse.bench.cli --help``.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clipfuse.console import console, err

__all__ = ["app", "bench", "register"]

app = typer.Typer(
    help="clipfuse benchmarks: ingest throughput and query latency on generated catalog photos.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def bench(
    model: Annotated[str, typer.Option(help="open_clip model name, hf-hub:..., local-dir:..., or clipfuse-demo")] = (
        "ViT-B-32"
    ),
    pretrained: Annotated[
        Optional[str], typer.Option(help="open_clip weights tag or checkpoint file (default: random weights)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (cuda when available), cpu, cuda, cuda:1")] = "auto",
    precision: Annotated[
        Optional[str], typer.Option(help="fp32 | bf16 | fp16 (default: bf16 on CUDA, fp32 on the CPU)")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="images / texts per forward")] = 64,
    ingest_batch: Annotated[
        Optional[int], typer.Option(min=1, help="documents per ingest batch (default: 4 x batch size, >= 64)")
    ] = None,
    images: Annotated[int, typer.Option("--images", "-n", min=1, help="images per measured phase")] = 256,
    unique_images: Annotated[int, typer.Option(min=1, help="distinct generated photos (the rest repeat them)")] = 64,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes of the baseline")] = 2,
    load_workers: Annotated[int, typer.Option(min=1, help="the Indexer's loader threads")] = 8,
    reduced_jpeg_decode: Annotated[
        bool, typer.Option(help="libjpeg reduced-size decoding of large JPEGs in the pipeline")
    ] = True,
    device_decode: Annotated[
        bool, typer.Option(help="also run the pipeline with JPEG decoding on the model's device (nvjpeg on CUDA)")
    ] = True,
    ingest: Annotated[bool, typer.Option(help="also run the full ingest (texts, BM25, upsert to Edge)")] = True,
    baseline: Annotated[bool, typer.Option(help="also run the clip-retrieval-style DataLoader baseline")] = True,
    texts: Annotated[int, typer.Option(min=1, help="captions for the text tower and BM25 figures")] = 512,
    query_docs: Annotated[
        int, typer.Option(min=0, help="documents in the query-latency store (synthetic dense vectors; 0: skip)")
    ] = 10_000,
    queries: Annotated[int, typer.Option(min=0, help="timed text hybrid queries")] = 100,
    query_encoders: Annotated[
        str,
        typer.Option(help="text paths timed side by side in the query phase: torch, torch-1t, onnx, onnx-int8"),
    ] = "torch,torch-1t,onnx,onnx-int8",
    busy_core: Annotated[
        bool, typer.Option(help="also time the queries while a spinning process loads one core")
    ] = True,
    repeats: Annotated[int, typer.Option(min=1, help="turns of each phase, in alternation; the best counts")] = 2,
    seed: Annotated[int, typer.Option(help="seed of the generated photos and texts")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress display")] = False,
) -> None:
    """Throughput of model-only, the JPEG -> vector pipeline, full ingest and a clip-retrieval-style
    baseline, measured side by side on generated photos of realistic size, with ratios and a
    per-stage breakdown; text-tower and BM25 throughput; text hybrid query latency p50 / p95."""
    from clipfuse.bench.run import BenchConfig, run_bench
    from clipfuse.errors import ClipfuseError

    config = BenchConfig(
        model=model,
        pretrained=pretrained,
        device=device,
        precision=precision,
        batch_size=batch_size,
        ingest_batch=ingest_batch,
        images=images,
        unique_images=unique_images,
        workers=workers,
        load_workers=load_workers,
        reduced_jpeg_decode=reduced_jpeg_decode,
        device_decode=device_decode,
        ingest=ingest,
        baseline=baseline,
        texts=texts,
        query_docs=query_docs,
        queries=queries,
        query_encoders=tuple(e.strip() for e in query_encoders.split(",") if e.strip()),
        query_busy_core=busy_core,
        repeats=repeats,
        seed=seed,
    )
    show = not quiet and err.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
        transient=True,
    )
    tasks: dict[str, Any] = {}
    last_phase: list[str] = []

    def report(phase: str, done: int, total: int) -> None:
        if show:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)
        elif not quiet and (not last_phase or last_phase[-1] != phase):
            err.print(f"bench: {phase} ...")  # a log line per phase when stderr is not a terminal
            last_phase.append(phase)

    try:
        with progress:
            result = run_bench(config, progress=report)
    except ClipfuseError as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        print_result(result)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_result(result: dict[str, Any]) -> None:
    cfg, env, thr, ratios = result["config"], result["environment"], result["throughput"], result["ratios"]
    console.print(
        f"[bold]clipfuse bench[/]: {cfg['model']} ({cfg['pretrained'] or 'random weights'}) on "
        f"{env['gpu'] or cfg['device_resolved']}, {cfg['precision_resolved']}, batch {cfg['batch_size']}, "
        f"{cfg['images']} images ({', '.join(env['image_sizes'])}, ~{env['mean_jpeg_kb']} KB JPEG) -> "
        f"{env['model_input']} px; {env['threads']} torch threads, {env['cpu_count']} CPUs, "
        f"load average {env['load_average_before']} -> {env['load_average_after']}"
    )
    table = Table(title="throughput (best of turns)")
    table.add_column("phase")
    table.add_column("per second", justify="right")
    table.add_column("per CPU second", justify="right")
    table.add_column("turns (wall)")
    turns = result["turns"]
    cpu = result["per_cpu_second"]
    rows = [
        (
            "model only, image tower (images)",
            thr["model_only_images_per_s"],
            cpu["model_only_images"],
            "model_only_images",
        ),
        ("model only, text tower (texts)", thr["model_only_texts_per_s"], None, "model_only_texts"),
        ("model only, both towers (documents)", thr["model_only_documents_per_s"], cpu["model_only_documents"], ""),
        ("pipeline: JPEG files -> vectors (images)", thr["pipeline_images_per_s"], cpu["pipeline_images"], "pipeline"),
        (
            "pipeline, decode on the device (images)",
            thr["device_pipeline_images_per_s"],
            cpu["device_pipeline_images"],
            "device_pipeline",
        ),
        (
            "baseline: DataLoader + PIL + preprocess (images)",
            thr["baseline_images_per_s"],
            cpu["baseline_images"],
            "baseline",
        ),
        (
            "ingest: + texts, BM25, upsert to Edge (documents)",
            thr["ingest_documents_per_s"],
            cpu["ingest_documents"],
            "ingest",
        ),
        ("embed_texts (texts)", thr["embed_texts_per_s"], None, ""),
        ("BM25 encode (texts)", thr["bm25_texts_per_s"], None, ""),
    ]
    for name, value, per_cpu, key in rows:
        table.add_row(name, _fmt(value), _fmt(per_cpu), ", ".join(f"{t:,.1f}" for t in turns.get(key, [])))
    console.print(table)
    cpu_ratios = result["cpu_ratios"]
    ratio_table = Table(title="ratios (wall: best turns; per CPU second: all threads and processes of this run)")
    ratio_table.add_column("")
    ratio_table.add_column("wall", justify="right")
    ratio_table.add_column("per CPU s", justify="right")
    for label, key in (
        ("pipeline / model only (images)", "pipeline_vs_model_only"),
        ("pipeline / baseline", "pipeline_vs_baseline"),
        ("device-decode pipeline / model only", "device_pipeline_vs_model_only"),
        ("device-decode pipeline / baseline", "device_pipeline_vs_baseline"),
        ("ingest / model only (documents, both towers)", "ingest_vs_model_only_documents"),
    ):
        ratio_table.add_row(label, _fmt(ratios.get(key), 3), _fmt(cpu_ratios.get(key), 3))
    console.print(ratio_table)
    stage_table = Table(
        title="stages, ms per image (read / decode / preprocess: CPU time summed over the loader's threads; "
        "the rest: the calling thread's wall time)"
    )
    stage_table.add_column("stage")
    stage_table.add_column("pipeline", justify="right")
    stage_table.add_column("ingest", justify="right")
    pipeline_stages = result["stages_ms_per_image"]["pipeline"] or {}
    ingest_stages = result["stages_ms_per_image"]["ingest"] or {}
    order = ["read", "decode", "preprocess", "validate", "load", "embed_images", "embed_texts", "bm25", "upsert"]
    for name in order + sorted((set(pipeline_stages) | set(ingest_stages)) - set(order)):
        if name in pipeline_stages or name in ingest_stages:
            label = "load (waiting for the pool)" if name == "load" else name
            stage_table.add_row(label, _fmt(pipeline_stages.get(name), 3), _fmt(ingest_stages.get(name), 3))
    console.print(stage_table)
    query = result["query"]
    if query:
        print_query(query)
    console.print(f"{result['seconds']} s in all")


def print_query(query: dict[str, Any]) -> None:
    engine = query["engine"]
    console.print(
        f"text hybrid query, {query['documents']:,} documents (random dense vectors, real BM25), "
        f"{query['queries']} distinct queries, k=10; load average {query['load_average']}"
    )
    table = Table(title="whole HybridSearcher.search, ms (encode + BM25 + engine + fusion + hits)")
    for column in ("path", "p50", "p95", "encode p50", "encode p95", "busy core p50", "busy core p95", "cos to torch"):
        table.add_column(column, justify="left" if column == "path" else "right")
    busy = query.get("busy_core") or {}
    for name, row in query["encoders"].items():
        other = busy.get(name, {})
        table.add_row(
            name + (" (default)" if name == query["default_encoder"] else ""),
            _fmt(row["p50_ms"], 2),
            _fmt(row["p95_ms"], 2),
            _fmt(row["encode_p50_ms"], 2),
            _fmt(row["encode_p95_ms"], 2),
            _fmt(other.get("p50_ms"), 2),
            _fmt(other.get("p95_ms"), 2),
            _fmt(query["cosine_to_torch_min"].get(name), 6),
        )
    hit = query["cache_hit"]
    table.add_row("cache hit", _fmt(hit["p50_ms"], 2), _fmt(hit["p95_ms"], 2), _fmt(hit["encode_p50_ms"], 3),
                  _fmt(hit["encode_p95_ms"], 3), "", "", "1")  # fmt: skip
    with_vector, alone = engine["search_with_vector"], engine["backend_search"]
    table.add_row("vector given", _fmt(with_vector["p50_ms"], 2), _fmt(with_vector["p95_ms"], 2), "-", "-", "", "", "")
    table.add_row("engine alone", _fmt(alone["p50_ms"], 2), _fmt(alone["p95_ms"], 2), "-", "-", "", "", "")
    console.print(table)
    for name, why in query.get("skipped_encoders", {}).items():
        console.print(f"[yellow]{name}: {why}[/]")
    parts = ", ".join(f"{k} {v:.3f}" for k, v in query["breakdown_ms_p50"].items())
    console.print(f"breakdown, p50 ms ({query['default_encoder']}): {parts}")


def register(main: typer.Typer) -> None:
    """Add ``bench`` to the main ``clipfuse`` app."""
    main.command("bench")(bench)


app.command("bench")(bench)

if __name__ == "__main__":  # pragma: no cover
    app()
