"""The ``clipfuse`` command line: demo, index, search, info, delete."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from clipfuse.bench.cli import register as register_bench_command
from clipfuse.console import (
    DEMO_STORE,
    console,
    err,
    fail,
    missing_index,
    print_hits,
    print_report,
    settings_from_options,
)
from clipfuse.demo.run import run_demo
from clipfuse.errors import ClipfuseError
from clipfuse.eval.cli import register as register_eval_command
from clipfuse.factory import (
    build_backend,
    build_searcher,
    build_writer,
    model_settings_for_index,
    settings_for_existing_index,
)
from clipfuse.ingest.run import optimize_index, run_index
from clipfuse.plugin.protocol import Stats
from clipfuse.reindex.cli import describe_record
from clipfuse.reindex.cli import register as register_reindex_commands
from clipfuse.reindex.writer import resolve_alias
from clipfuse.schemas import SearchRequest, parse_filter, parse_weights
from clipfuse.schemas.safetext import markup_safe
from clipfuse.schemas.search import parse_boost
from clipfuse.settings import Settings
from clipfuse.workers.cli import register as register_queue_commands

app = typer.Typer(
    help="clipfuse: multimodal hybrid search (OpenCLIP + BM25) for product catalogs on Qdrant and Elasticsearch. "
    "Start with `clipfuse demo`; every command has --help; settings come from CLIPFUSE_* variables (README).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model", help="open_clip model name, hf-hub:..., local-dir:..., or clipfuse-demo [env CLIPFUSE_MODEL__NAME]"
    ),
]
IndexOpt = Annotated[
    Optional[str], typer.Option("--index", help="collection name [env CLIPFUSE_INDEX; default products]")
]
StoreOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--store",
        help="embedded store folder [env CLIPFUSE_EDGE__PATH, or CLIPFUSE_QDRANT__PATH with CLIPFUSE_BACKEND=qdrant; "
        "default clipfuse-data/edge]; a folder holding a qdrant-client local store is opened with qdrant-client",
    ),
]


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="a JSONL catalog (one document per line) or a folder of images")],
    model: ModelOpt = None,
    index: IndexOpt = None,
    store: StoreOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(help="documents per batch [env CLIPFUSE_BATCH_SIZE]")] = None,
    report: Annotated[
        Optional[Path], typer.Option(help="write the full report (with every rejection) as JSON here")
    ] = None,
    optimize: Annotated[
        bool,
        typer.Option(
            help="build the search index (Qdrant Edge's HNSW graphs) after indexing; --no-optimize when more "
            "batches follow, then run `clipfuse optimize` once"
        ),
    ] = True,
) -> None:
    """Index a catalog in-process into the store, with a progress bar and a report of rejections.

    Into an existing index, the model it records is used unless --model (or CLIPFUSE_MODEL__NAME)
    says otherwise; a different model is refused.
    """
    extra = {"batch_size": batch_size} if batch_size else {}
    settings = settings_from_options(model, index, store, **extra)
    try:
        explicit = model is not None or "CLIPFUSE_MODEL__NAME" in os.environ
        if path.exists():
            settings = settings_for_existing_index(settings, explicit=explicit)
        result = run_index(settings, path, optimize=optimize, explicit=explicit)
    except ClipfuseError as e:
        fail(e)
    print_report(result, report)
    if report is None and result.rejected:
        fallback = (settings.embedded_store or Path("clipfuse-data")).parent / "last-index-report.json"
        fallback.parent.mkdir(parents=True, exist_ok=True)
        fallback.write_text(result.model_dump_json(indent=2), encoding="utf-8")
        console.print(f"rejections written to {markup_safe(fallback)}")


@app.command()
def search(
    text: Annotated[Optional[str], typer.Argument(help="query text, e.g. 'red leather ankle boots'")] = None,
    image: Annotated[Optional[str], typer.Option("--image", help="query image: a file path or an http(s) URL")] = None,
    filter: Annotated[
        Optional[list[str]],
        typer.Option(
            "--filter", "-f", help="FIELD OP VALUE, repeatable: 'category=shoes', 'price<=120', 'color=red|black'"
        ),
    ] = None,
    k: Annotated[
        Optional[int], typer.Option("--k", help="number of hits [default: 10; with --cursor: as before]")
    ] = None,
    offset: Annotated[int, typer.Option(help="skip this many hits (pagination)")] = 0,
    fusion: Annotated[str, typer.Option(help="rrf | dbsf | linear | zscore")] = "rrf",
    rrf_k: Annotated[float, typer.Option(help="RRF rank constant")] = 60.0,
    weights: Annotated[
        Optional[str], typer.Option(help="signal weights, e.g. image=1,text=0.5,bm25=2 (0 = off)")
    ] = None,
    compose_alpha: Annotated[
        float, typer.Option(help="image share of the query vector when both text and image are given")
    ] = 0.3,
    facet: Annotated[
        Optional[list[str]], typer.Option("--facet", help="count values of this field beside the hits, repeatable")
    ] = None,
    collapse: Annotated[
        Optional[str], typer.Option("--collapse", help="one hit per value of this keyword field, e.g. group_id")
    ] = None,
    boost: Annotated[
        Optional[list[str]],
        typer.Option(
            "--boost",
            help="repeatable: 'log1p(popularity)*0.1', 'in_stock=true:+0.1', "
            "'gauss(created_at, origin=now, scale=30d)*0.2'",
        ),
    ] = None,
    rules: Annotated[
        Optional[Path], typer.Option("--rules", help="merchandising rules file (JSON / YAML)", dir_okay=False)
    ] = None,
    cursor: Annotated[
        Optional[str], typer.Option("--cursor", help="next_cursor of a previous search: its next page")
    ] = None,
    explain: Annotated[bool, typer.Option("--explain", help="print each hit's score explanation")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the response as JSON")] = False,
    model: ModelOpt = None,
    index: IndexOpt = None,
    store: StoreOpt = None,
) -> None:
    """Search the index by text, image, or image + modifier text; shows each signal's score.

    Shop features: --facet (counts), --collapse (one hit per product, variants attached),
    --boost (business ranking), --rules (pins / hides), --cursor (the next page, frozen).
    """
    settings = settings_from_options(model, index, store)
    try:
        image_source: dict[str, str] | None = None
        if image:
            image_source = (
                {"url": image}
                if image.lower().startswith(("http://", "https://"))
                else {"path": str(Path(image).resolve())}
            )
        if cursor is not None:
            request = SearchRequest(cursor=cursor) if k is None else SearchRequest(cursor=cursor, k=k)
        else:
            fields: dict[str, Any] = {
                "text": text,
                "image": image_source,
                "filters": [parse_filter(f) for f in (filter or [])],
                "k": 10 if k is None else k,
                "offset": offset,
                "fusion": fusion,
                "rrf_k": rrf_k,
                "weights": parse_weights(weights),
                "compose_alpha": compose_alpha,
                "facets": facet or [],
                "boosts": [parse_boost(b) for b in (boost or [])],
            }
            if collapse:
                fields["collapse"] = {"field": collapse}
            request = SearchRequest.model_validate(fields)
        backend = build_backend(settings)
        try:
            info = backend.index_info()
            if info is None:
                raise ClipfuseError(missing_index(settings))
            explicit = model is not None or "CLIPFUSE_MODEL__NAME" in os.environ
            settings = settings.model_copy(
                update={"model": model_settings_for_index(settings, info.model, explicit=explicit)}
            )
            cursor_dir = settings.embedded_store / ".cursors" if settings.embedded_store is not None else None
            searcher = build_searcher(settings, backend=backend, cursor_dir=cursor_dir)
            if rules is not None:
                searcher.load_rules(rules)
            response = searcher.search(request)
        finally:
            backend.close()  # an error must not leave the embedded store locked
    except ClipfuseError as e:
        fail(e)
    except ValueError as e:  # pydantic validation of the request
        fail(ClipfuseError(str(e)))
    if as_json:
        sys.stdout.write(response.model_dump_json(indent=2) + "\n")
    else:
        title = f"query: {text or ''}{' + image ' + image if image else ''}" if cursor is None else "next page"
        print_hits(response, title=title, explain=explain)


@app.command()
def info(index: IndexOpt = None, store: StoreOpt = None) -> None:
    """Show the index: documents, model, dimension, filterable fields; the alias and the indexes behind it."""
    settings = settings_from_options(None, index, store)
    try:
        backend = build_backend(settings)
        try:
            meta = backend.index_info()
            count = backend.count()
            record = resolve_alias(backend, settings.index)
            alias_lines = describe_record(backend, record, settings.index) if record is not None else []
        finally:
            backend.close()
    except ClipfuseError as e:
        fail(e)
    if meta is None:
        console.print(markup_safe(missing_index(settings)))
        raise typer.Exit(1)
    where = settings.embedded_store or "server"
    console.print(
        f"index [bold]{settings.index}[/] ({settings.engine}, {where}): {count} documents, "
        f"model {meta.model}, dim {meta.dim}"
    )
    console.print("filterable fields: " + (", ".join(f"{k} ({v})" for k, v in sorted(meta.fields.items())) or "none"))
    for line in alias_lines:
        console.print(line)


@app.command()
def delete(
    ids: Annotated[list[str], typer.Argument(help="document ids to delete")],
    index: IndexOpt = None,
    store: StoreOpt = None,
) -> None:
    """Delete documents by id (from every live index behind the alias: during a re-index, both)."""
    settings = settings_from_options(None, index, store)
    try:
        writer = build_writer(settings)
        try:
            writer.delete(ids)
        finally:
            writer.close()
    except ClipfuseError as e:
        fail(e)
    console.print(f"deleted {len(ids)} id{'' if len(ids) == 1 else 's'} (ids the index did not hold are ignored)")


@app.command()
def optimize(index: IndexOpt = None, store: StoreOpt = None) -> None:
    """Build the search index of an embedded Qdrant Edge store (HNSW graphs; blocking, CPU-heavy).

    `clipfuse index` does this after each run; use it after `clipfuse index --no-optimize`
    or after workers have written into an Edge store. Searches are correct before it, only slower.
    """
    settings = settings_from_options(None, index, store)
    try:
        backend = build_backend(settings)
        started = time.perf_counter()
        try:
            changed = optimize_index(backend)
            stats = backend.stats() if isinstance(backend, Stats) else None
        finally:
            backend.close()
    except ClipfuseError as e:
        fail(e)
    if changed is None:
        console.print(f"the {settings.engine} engine builds its index by itself: nothing to do")
        return
    elapsed = time.perf_counter() - started
    detail = f" ({stats['points']} points, {stats['segments']} segment(s))" if stats else ""
    console.print(f"{'index built' if changed else 'index already up to date'} in {elapsed:.1f}s{detail}")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="where the demo catalog and store go")] = Path(
        "clipfuse-data/demo"
    ),
    size: Annotated[int, typer.Option("--size", help="products in the demo catalog")] = 400,
    fresh: Annotated[bool, typer.Option(help="rebuild the catalog and the index from scratch")] = True,
) -> None:
    """Generate a synthetic catalog, index it with the shipped demo model, run sample searches."""
    if fresh and directory.exists():
        shutil.rmtree(directory)
    try:
        run_demo(directory, size=size, console=console)
    except ClipfuseError as e:
        fail(e)


def _index_exists(settings: Settings) -> bool:
    try:
        backend = build_backend(settings)
    except ClipfuseError:
        return True  # the service's own start says what is wrong
    try:
        return backend.index_info() is not None
    except ClipfuseError:
        return True
    finally:
        backend.close()


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="address to listen on [env CLIPFUSE_SERVICE__HOST]")] = None,
    port: Annotated[Optional[int], typer.Option(help="port [env CLIPFUSE_SERVICE__PORT; default 8000]")] = None,
    store: StoreOpt = None,
    index: IndexOpt = None,
    model: ModelOpt = None,
    catalog_root: Annotated[
        Optional[Path],
        typer.Option(
            "--catalog-root",
            help="folder whose product images the web page shows (the folder of the JSONL catalog) "
            "[env CLIPFUSE_SERVICE__CATALOG_ROOT; default: the 'catalog' folder next to the store, if any]",
        ),
    ] = None,
) -> None:
    """Run the HTTP search service and web search page (FastAPI + uvicorn)."""
    try:
        import uvicorn

        from clipfuse.service.app import create_app
    except ImportError as e:
        fail(ClipfuseError(f"the service needs its extra dependencies: pip install 'clipfuse[service]' ({e})"))
    settings = settings_from_options(model, index, store)
    update: dict[str, Any] = {}
    if host:
        update["host"] = host
    if port:
        update["port"] = port
    if catalog_root:
        update["catalog_root"] = catalog_root.resolve()
    embedded = settings.embedded_store
    if not catalog_root and settings.service.catalog_root is None and embedded is not None:
        guess = embedded.parent / "catalog"
        if guess.is_dir():
            update["catalog_root"] = guess.resolve()
    settings = settings.model_copy(update={"service": settings.service.model_copy(update=update)})
    if embedded is not None:
        err.print(
            f"[dim]serving the embedded store {embedded} (one process at a time: stop the service "
            "before indexing into it; production runs a Qdrant server, CLIPFUSE_QDRANT__URL)[/]"
        )
        if DEMO_STORE.is_dir() and embedded.resolve() != DEMO_STORE.resolve() and not _index_exists(settings):
            # the demo ran here but --store was forgotten: say so before the model or the page says less
            err.print(f"[yellow]warning:[/] {markup_safe(missing_index(settings))}")
    try:
        application = create_app(settings)
        application.state.service.start()  # open the engine and load the model now: errors read better here
    except ClipfuseError as e:
        fail(e)
    err.print(f"web search page and API on http://{settings.service.host}:{settings.service.port}/ (docs at /docs)")
    uvicorn.run(
        application,
        host=settings.service.host,
        port=settings.service.port,
        log_level=settings.log_level.lower() if settings.log_level.upper() != "WARNING" else "info",
        proxy_headers=True,
    )


register_queue_commands(app)
register_eval_command(app)
register_reindex_commands(app)
register_bench_command(app)


def main() -> None:  # pragma: no cover - console script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
