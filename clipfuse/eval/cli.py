"""``clipfuse eval``: measure search quality (Recall@k, MRR@10, nDCG@10, mAP) per signal and fusion method.

Mounted into the main ``clipfuse`` command by :func:`register`; also runnable alone
as ``python -m clipfuse.eval.cli``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from clipfuse.console import console, err, fail, progress, settings_from_options
from clipfuse.demo.catalog import generate_products, write_catalog
from clipfuse.demo.run import DEMO_SEED
from clipfuse.errors import ClipfuseError
from clipfuse.eval.demo import make_demo_queries
from clipfuse.eval.loaders import EvalQuery, load_karpathy, load_qrels, load_queries, write_qrels_trec, write_queries
from clipfuse.eval.metrics import METRICS
from clipfuse.eval.runner import ConfigResult, SignalLists, collect_signals, evaluate_configs, standard_configs
from clipfuse.eval.tuning import RRF_K_GRID, WEIGHT_GRID, split_queries, tune
from clipfuse.factory import build_backend, build_searcher, model_settings_for_index
from clipfuse.ingest.run import run_index
from clipfuse.schemas import SearchRequest, Weights, parse_weights
from clipfuse.settings import DEMO_MODEL

__all__ = ["app", "eval_command", "register", "run_eval"]

app = typer.Typer(
    help="clipfuse eval: search quality per signal and fusion method.",
    add_completion=False,
    pretty_exceptions_enable=False,
)

_HEADERS = {
    "recall@1": "R@1",
    "recall@5": "R@5",
    "recall@10": "R@10",
    "mrr@10": "MRR@10",
    "ndcg@10": "nDCG@10",
    "map": "mAP",
}


def distinct_groups(searcher: Any, queries: list[EvalQuery], *, limit: int = 100) -> dict[str, Any]:
    """Mean number of distinct products (``group_id``) in the top 10, without and with collapse.

    Run on up to ``limit`` text queries with the default hybrid search: without collapse, colour
    variants of one product take several of the ten places; with ``collapse="group_id"`` each
    place is another product.
    """
    texts = [q.text for q in queries if q.text and q.image is None][:limit]
    plain: list[int] = []
    collapsed: list[int] = []
    for text in texts:
        hits = searcher.search(SearchRequest(text=text, k=10)).hits
        plain.append(len({h.payload.get("group_id", h.id) for h in hits}))
        grouped = searcher.search(SearchRequest(text=text, k=10, collapse="group_id")).hits
        collapsed.append(len({h.group or h.id for h in grouped}))
    n = max(1, len(texts))
    return {"queries": len(texts), "without_collapse": sum(plain) / n, "with_collapse": sum(collapsed) / n}


def run_eval(
    settings: Any,
    queries: list[EvalQuery],
    qrels: dict[str, dict[str, int]],
    *,
    weights: Weights | None = None,
    rrf_k: float = 60.0,
    depth: int = 100,
    tune_budget: int | None = None,
    dev_fraction: float = 0.5,
    seed: int = 0,
    no_relevant: str = "zero",
    show_progress: bool = True,
) -> tuple[dict[str, Any], list[ConfigResult]]:
    """Query the index of ``settings`` once per query, score every configuration (and tune, with a budget).

    Returns the JSON report and the results shown in the table (on the held-out split when tuning).
    """
    backend = build_backend(settings)
    try:
        info = backend.index_info()
        if info is None:
            raise ClipfuseError(f"index {settings.index!r} does not exist: index a catalog first (clipfuse index PATH)")
        settings = settings.model_copy(update={"model": model_settings_for_index(settings, info.model, explicit=False)})
        searcher = build_searcher(settings, backend=backend)
        with progress() as bar:
            task = bar.add_task("running queries", total=len(queries), visible=show_progress)
            signals: SignalLists = collect_signals(
                searcher, queries, depth=depth, on_query=lambda _n: bar.advance(task, 1)
            )
        documents = backend.count()
        distinct = distinct_groups(searcher, queries) if info.fields.get("group_id") == "keyword" else None
    finally:
        backend.close()

    configs = standard_configs(weights, rrf_k)
    report: dict[str, Any] = {
        "index": settings.index,
        "engine": getattr(settings, "engine", settings.backend),
        "documents": documents,
        "model": info.model,
        "queries": len(queries),
        "judged_queries": len(qrels),
        "depth": depth,
        "candidates_per_signal": signals.candidates,
        "query_seconds": round(signals.seconds, 2),
        "query_errors": signals.errors,
        "no_relevant": no_relevant,
    }
    if tune_budget:
        dev_ids, test_ids = split_queries(list(signals.lists), signals.kinds, dev_fraction=dev_fraction, seed=seed)
        started = time.perf_counter()
        tuned = tune(signals, qrels, dev_ids, budget=tune_budget, seed=seed, depth=depth, rrf_k=rrf_k)
        results = evaluate_configs(
            signals, qrels, [*configs, tuned.best], depth=depth, query_ids=test_ids, no_relevant=no_relevant
        )
        results[-1].dev_score = tuned.best_score
        report["split"] = {"dev": len(dev_ids), "held_out": len(test_ids), "seed": seed, "dev_fraction": dev_fraction}
        report["tuning"] = {
            "search": "random over a grid, standard configurations first",
            "budget": tune_budget,
            "tried": len(tuned.trials),
            "metric": tuned.metric,
            "weight_grid": list(WEIGHT_GRID),
            "rrf_k_grid": list(RRF_K_GRID),
            "methods": ["rrf", "linear", "zscore", "dbsf"],
            "seconds": round(time.perf_counter() - started, 2),
            "best": results[-1].to_json(),
            "dev_score": tuned.best_score,
            "cli": tuned.best.cli_args(),
            "python": tuned.best.python(),
            "trials": [
                {"description": c.describe(), "cli": c.cli_args(), "dev_score": score} for c, score in tuned.trials
            ],
        }
        report["evaluated_on"] = "held-out split"
    else:
        results = evaluate_configs(signals, qrels, configs, depth=depth, no_relevant=no_relevant)
        report["evaluated_on"] = "all queries"
    coverage = results[0].evaluation.coverage
    report["coverage"] = {
        "evaluated": coverage.evaluated,
        "queries_without_qrels": coverage.no_qrels,
        "judged_queries_not_run": coverage.not_run,
        "queries_without_relevant_documents": coverage.no_relevant,
        "notes": coverage.notes(),
    }
    report["configs"] = [r.to_json() for r in results]
    if distinct is not None:
        report["distinct_groups_top10"] = distinct
    singles = [r for r in results if r.config.single_signal]
    fused = [r for r in results if not r.config.single_signal]
    if singles and fused:
        best_single = max(singles, key=lambda r: r.evaluation.means["ndcg@10"])
        best_fused = max(fused, key=lambda r: r.evaluation.means["ndcg@10"])
        report["best_single"] = {"name": best_single.config.name, "ndcg@10": best_single.evaluation.means["ndcg@10"]}
        report["best_fused"] = {"name": best_fused.config.name, "ndcg@10": best_fused.evaluation.means["ndcg@10"]}
        report["fused_beats_single"] = best_fused.evaluation.means["ndcg@10"] > best_single.evaluation.means["ndcg@10"]
    return report, results


def results_table(results: list[ConfigResult], *, title: str, groups_too: bool = True) -> Table:
    """The rich table; ``groups_too``: add nDCG@10 per query group (wide: needs ~130 columns)."""
    groups = sorted({g for r in results for g in r.ndcg_by_kind}) if groups_too else []
    caption = "columns after mAP: nDCG@10 per query group" if len(groups) > 1 else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("configuration", no_wrap=True)
    for metric in METRICS:
        table.add_column(_HEADERS[metric], justify="right")
    if len(groups) > 1:
        for group in groups:
            table.add_column(group, justify="right")
    best = {m: max(r.evaluation.means[m] for r in results) for m in METRICS}
    for position, r in enumerate(results):
        cells = [r.config.name]
        for metric in METRICS:
            value = r.evaluation.means[metric]
            cells.append(f"[bold]{value:.3f}[/]" if value == best[metric] else f"{value:.3f}")
        if len(groups) > 1:
            cells += [f"{r.ndcg_by_kind[g]:.3f}" if g in r.ndcg_by_kind else "-" for g in groups]
        last_single = r.config.single_signal and (
            position + 1 == len(results) or not results[position + 1].config.single_signal
        )
        table.add_row(*cells, end_section=last_single)
    return table


def markdown_table(results: list[ConfigResult]) -> str:
    """The results as a Markdown table (for docs)."""
    groups = sorted({g for r in results for g in r.ndcg_by_kind})
    head = ["configuration", *(_HEADERS[m] for m in METRICS), *(f"nDCG@10 {g}" for g in groups if len(groups) > 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        name = f"tuned: {r.config.describe()}" if r.config.name == "tuned" else r.config.name
        cells = [name, *(f"{r.evaluation.means[m]:.3f}" for m in METRICS)]
        if len(groups) > 1:
            cells += [f"{r.ndcg_by_kind[g]:.3f}" if g in r.ndcg_by_kind else "-" for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _demo_inputs(
    directory: Path, *, size: int, n_queries: int, text_noise: float, seed: int
) -> tuple[Path, list[EvalQuery], dict[str, dict[str, int]]]:
    catalog = write_catalog(directory / "catalog", n=size, seed=DEMO_SEED, text_noise=text_noise)
    products = generate_products(size, DEMO_SEED, text_noise=text_noise)
    queries, qrels = make_demo_queries(products, n_queries, seed=seed, images_dir=directory / "query-images")
    write_queries(directory / "queries.jsonl", queries)
    write_qrels_trec(directory / "qrels.tsv", qrels)
    return catalog, queries, qrels


def eval_command(
    queries: Annotated[
        Optional[Path], typer.Option("--queries", help="queries JSONL: id, text and/or image, optional modifier")
    ] = None,
    qrels: Annotated[
        Optional[Path], typer.Option("--qrels", help="judgments: TREC 'query_id 0 doc_id grade' or JSONL")
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo", help="generate a noisy synthetic catalog with graded queries in --dir, index it, evaluate"
        ),
    ] = False,
    size: Annotated[int, typer.Option("--size", help="--demo: products in the catalog")] = 600,
    n_queries: Annotated[int, typer.Option("--n-queries", help="--demo: number of queries")] = 200,
    text_noise: Annotated[
        float, typer.Option("--text-noise", help="--demo: how imperfect the listings' texts are (0 = clean)")
    ] = 1.0,
    karpathy: Annotated[
        Optional[Path],
        typer.Option("--karpathy", help="Karpathy-split JSON (dataset_flickr30k.json / dataset_coco.json)"),
    ] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="--karpathy: the dataset's images folder")] = None,
    split: Annotated[str, typer.Option("--split", help="--karpathy: split to evaluate")] = "test",
    directory: Annotated[
        Path, typer.Option("--dir", help="--demo / --karpathy: where the catalog, queries and store go")
    ] = Path("clipfuse-data/eval"),
    weights: Annotated[
        Optional[str],
        typer.Option(help="weights for weighted RRF and the linear methods, e.g. image=1,text=0.5,bm25=2"),
    ] = None,
    rrf_k: Annotated[float, typer.Option(help="RRF rank constant")] = 60.0,
    depth: Annotated[int, typer.Option(help="ranking depth scored (mAP, recall curve)", min=10, max=1000)] = 100,
    tune_: Annotated[
        bool,
        typer.Option("--tune", help="pick fusion, weights and RRF k on a dev split; report on the held-out split"),
    ] = False,
    budget: Annotated[int, typer.Option(help="--tune: configurations tried on the dev split", min=1)] = 150,
    dev_fraction: Annotated[float, typer.Option(help="--tune: share of queries in the dev split")] = 0.5,
    seed: Annotated[int, typer.Option(help="seed of the demo queries, the split and the search")] = 0,
    skip_no_relevant: Annotated[
        bool,
        typer.Option(help="leave queries without any relevant document out of the means (default: count 0)"),
    ] = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="JSON report path; the PNG chart goes next to it [DIR/eval.json]")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON report instead of the table")] = False,
    model: Annotated[Optional[str], typer.Option("--model", help="model (default: the one the index records)")] = None,
    index: Annotated[Optional[str], typer.Option("--index", help="collection name [default products]")] = None,
    store: Annotated[Optional[Path], typer.Option("--store", help="embedded store folder")] = None,
) -> None:
    """Measure search quality: Recall@1/5/10, MRR@10, nDCG@10, mAP for each signal and fusion method."""
    started = time.perf_counter()
    sources = sum([demo, karpathy is not None, queries is not None or qrels is not None])
    if sources != 1:
        fail("give exactly one of --demo, --karpathy FILE --images DIR, or --queries FILE --qrels FILE")
    out_path = out or directory / "eval.json"
    try:
        parsed_weights = parse_weights(weights)
        if demo:
            if size < 10 or n_queries < 4:
                raise ClipfuseError("--demo needs --size >= 10 and --n-queries >= 4")
            directory.mkdir(parents=True, exist_ok=True)
            for stale in ("store", "catalog", "query-images"):
                shutil.rmtree(directory / stale, ignore_errors=True)
            err.print(f"generating {size} products (text noise {text_noise}) and {n_queries} queries in {directory}")
            catalog, query_list, judged = _demo_inputs(
                directory, size=size, n_queries=n_queries, text_noise=text_noise, seed=seed
            )
            settings = settings_from_options(model or DEMO_MODEL, index, store or directory / "store")
            report_index = run_index(settings, catalog, show_progress=not as_json)
            err.print(f"indexed {report_index.indexed} products in {report_index.seconds:.1f}s")
        elif karpathy is not None:
            if images is None:
                raise ClipfuseError("--karpathy needs --images DIR (the dataset's images folder)")
            data = load_karpathy(karpathy, images, split=split)
            if data.missing_images:
                err.print(f"[yellow]{len(data.missing_images)} images of the split are missing and left out[/]")
            query_list, judged = data.queries, data.qrels
            settings = settings_from_options(model, index, store or directory / "store")
            backend = build_backend(settings)
            try:
                existing = backend.count() if backend.index_info() is not None else 0
            finally:
                backend.close()
            if existing != len(data.documents):
                catalog = data.write_catalog(directory / f"{data.dataset}-{split}.jsonl")
                report_index = run_index(settings, catalog, show_progress=not as_json)
                err.print(f"indexed {report_index.indexed} images in {report_index.seconds:.1f}s")
        else:
            if queries is None or qrels is None:
                raise ClipfuseError("--queries and --qrels go together")
            query_list, judged = load_queries(queries), load_qrels(qrels)
            settings = settings_from_options(model, index, store)
        report, results = run_eval(
            settings,
            query_list,
            judged,
            weights=parsed_weights,
            rrf_k=rrf_k,
            depth=depth,
            tune_budget=budget if tune_ else None,
            dev_fraction=dev_fraction,
            seed=seed,
            no_relevant="skip" if skip_no_relevant else "zero",
            show_progress=not as_json,
        )
    except ClipfuseError as e:
        fail(e)
    except ValueError as e:
        fail(ClipfuseError(str(e)))
    args = sys.argv[1:]
    report["command"] = " ".join(["clipfuse", "eval", *args[1 if args[:1] == ["eval"] else 0 :]])
    report["seconds"] = round(time.perf_counter() - started, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    chart: Path | None = out_path.with_suffix(".png")
    where = report["evaluated_on"]
    try:
        from clipfuse.eval.plotting import plot_results

        evaluated = results[0].evaluation.coverage.evaluated
        plot_results(results, chart, title=f"{report['documents']} documents, {where} ({evaluated} queries)")  # type: ignore[arg-type]
    except ImportError as e:
        err.print(f"[yellow]no chart:[/] {e}")
        chart = None
    out_path.with_suffix(".md").write_text(markdown_table(results))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    evaluated = results[0].evaluation.coverage.evaluated
    console.print(
        results_table(
            results,
            title=f"{report['documents']} documents, {evaluated} queries ({where}), depth {depth}",
            groups_too=console.width >= 130,
        )
    )
    for note in report["coverage"]["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    if report["query_errors"]:
        console.print(f"[yellow]note:[/] {len(report['query_errors'])} queries failed and score 0 (see the JSON)")
    groups = report.get("distinct_groups_top10")
    if groups:
        console.print(
            f"distinct products (group_id) in the top 10, hybrid, {groups['queries']} text queries: "
            f"{groups['without_collapse']:.2f} without collapse, {groups['with_collapse']:.2f} with collapse"
        )
    if "best_single" in report:
        verdict = "beats" if report["fused_beats_single"] else "does NOT beat"
        console.print(
            f"best fusion [bold]{report['best_fused']['name']}[/] ({report['best_fused']['ndcg@10']:.3f}) {verdict} "
            f"the best single signal [bold]{report['best_single']['name']}[/] "
            f"({report['best_single']['ndcg@10']:.3f}) on nDCG@10"
        )
    if "tuning" in report:
        t = report["tuning"]
        console.print(
            f"tuned on {report['split']['dev']} dev queries ({t['tried']} configurations, {t['metric']} "
            f"{t['dev_score']:.3f} on dev); figures above are on the {report['split']['held_out']} held-out queries"
        )
        console.print(f"tuned = {results[-1].config.describe()}")
        console.print(f"  clipfuse search 'QUERY' {t['cli']}")
        console.print(f"  {t['python']}")
    console.print(f"[dim]report {out_path}, chart {chart}, markdown {out_path.with_suffix('.md')}[/]")


def register(main: typer.Typer) -> None:
    """Add ``eval`` to the main ``clipfuse`` app."""
    main.command("eval")(eval_command)


app.command("eval")(eval_command)

if __name__ == "__main__":  # pragma: no cover
    app()
