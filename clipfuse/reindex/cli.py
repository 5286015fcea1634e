"""``clipfuse reindex`` and ``clipfuse alias``: change the model behind the name users search."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from clipfuse.console import console, err, fail, print_report, progress, settings_from_options
from clipfuse.errors import ClipfuseError
from clipfuse.eval.loaders import load_qrels, load_queries
from clipfuse.factory import build_backend, build_embedder, build_image_loader, build_indexer, embedder_for_model
from clipfuse.plugin.protocol import Aliased, AliasRecord, Backend, physical_name
from clipfuse.reindex.gate import GateResult, run_gate
from clipfuse.reindex.job import Reindexer, SwapRefused, images_root_for, prune, rollback
from clipfuse.reindex.writer import resolve_alias

if TYPE_CHECKING:
    from clipfuse.settings import Settings

__all__ = ["alias_app", "register", "reindex_command", "run_reindex"]

alias_app = typer.Typer(help="The alias users search and the physical indexes behind it.", no_args_is_help=True)

IndexOpt = Annotated[Optional[str], typer.Option("--index", help="the alias [env CLIPFUSE_INDEX; default products]")]
StoreOpt = Annotated[Optional[Path], typer.Option("--store", help="embedded store folder (as for clipfuse index)")]


log = logging.getLogger(__name__)


def gate_table(result: GateResult | dict[str, Any]) -> Table:
    """The gate's table, from its result or its JSON (what a queued re-index's status holds)."""
    data = result if isinstance(result, dict) else result.to_json()
    metric = data["metric"]
    table = Table(
        "configuration",
        f"old {metric}",
        f"new {metric}",
        "new - old",
        title=f"evaluation gate ({data['old_model']} -> {data['new_model']})",
        title_justify="left",
    )
    for row in data["rows"]:
        mark = " <- gate" if row["config"] == data["config"] else ""
        table.add_row(row["config"] + mark, f"{row['old']:.4f}", f"{row['new']:.4f}", f"{row['delta']:+.4f}")
    return table


def describe_record(root: Backend, record: AliasRecord | None, alias: str) -> list[str]:
    """One line per index behind ``alias``: role, name, model, documents."""
    if record is None or not isinstance(root, Aliased):
        info = root.index_info()
        if info is None:
            return [f"{alias}: does not exist"]
        return [f"{alias}: a plain index (no alias; `clipfuse alias adopt` or the first reindex makes one)"]
    lines = [f"alias {alias} -> {record.target}"]
    for role, name in (("target", record.target), ("building", record.building), ("previous", record.previous)):
        if not name:
            continue
        backend = root.open_index(name)
        try:
            info = backend.index_info()
            count = backend.count()
        finally:
            if backend is not root:
                backend.close()
        model = info.model if info else "?"
        lines.append(f"  {role:8} {name}: model {model}, {count} documents")
    return lines


def run_reindex(
    settings: Settings,
    *,
    model_name: str,
    pretrained: str | None,
    images_root: Path | None,
    gate: tuple[Path, Path] | None = None,
    metric: str = "ndcg@10",
    gate_config: str = "RRF k=60",
    tolerance: float = 0.01,
    dry_run: bool = False,
    show_progress: bool = True,
    on_step: Any = None,
    root: Backend | None = None,
    page_size: int = 512,
) -> dict[str, Any]:
    """Re-embed the documents behind ``settings.index`` with another model and swap the alias (in-process).

    Returns a summary (plan, counts, timings, gate, outcome); raises :class:`SwapRefused`
    when the new index is incomplete or refused by the gate (the alias stays on the old index).
    ``root``: an open backend of the store to use (a service in the same process shares its own;
    an embedded store is open once per process), left open.
    """
    new_settings = settings.model.model_copy(update={"name": model_name, "pretrained": pretrained})
    new_embedder = build_embedder(new_settings)
    cache: dict[str, Any] = {new_embedder.model_id: new_embedder}

    def indexer_for(backend: Backend, model_id: str | None) -> Any:
        embedder = embedder_for_model(settings, model_id, cache)
        return build_indexer(settings, backend=backend, embedder=embedder, base_dir=images_root)

    owns_root = root is None
    root = root or build_backend(settings)
    job = Reindexer(root, settings.index, model_id=new_embedder.model_id, indexer_for=indexer_for, page_size=page_size)
    summary: dict[str, Any] = {"alias": settings.index, "model": new_embedder.model_id}
    try:
        plan = job.plan()
        summary["plan"] = plan.lines()
        for line in plan.lines():
            err.print(f"[dim]plan:[/] {line}")
        if dry_run:
            summary["outcome"] = "dry-run"
            return summary
        started = time.perf_counter()
        job.prepare()
        load = getattr(new_embedder, "load", None)
        if callable(load):  # the new model loads once, before the copy (as a worker's warm-up does)
            t = time.perf_counter()
            load()
            job.timings["load model"] = time.perf_counter() - t
        if on_step:
            on_step("prepared", job)
        with progress() as bar:
            task = bar.add_task(
                f"re-embedding with {new_embedder.model_id}", total=plan.source_documents, visible=show_progress
            )

            done = 0

            def advanced(report: Any, n: int) -> None:
                nonlocal done
                done += n
                bar.advance(task, n)
                log.info("re-index: %d of %d documents done", done, plan.source_documents)
                if on_step:
                    on_step("batch", job)

            report, skipped = job.copy(on_batch=advanced)
        copied = report.indexed
        summary.update(copied=copied, skipped=skipped, rejected=len(report.rejected), report=report)
        copy_seconds = job.timings.get("copy", 0.0)
        summary["docs_per_s"] = copied / copy_seconds if copy_seconds and copied else None
        if on_step:
            on_step("copied", job)
        verified = job.verify()
        summary["verify"] = verified.summary()
        if gate is not None:
            record = job.record()
            assert record is not None and record.building is not None
            old_backend = job.backend(record.target)
            old_info = old_backend.index_info()
            old_embedder = embedder_for_model(settings, old_info.model if old_info else None, cache)
            t = time.perf_counter()
            result = run_gate(
                (old_backend, old_embedder),
                (job.backend(record.building), new_embedder),
                load_queries(gate[0]),
                load_qrels(gate[1]),
                metric=metric,
                config=gate_config,
                tolerance=tolerance,
                image_loader=build_image_loader(settings.images, base_dir=gate[0].parent),
            )
            job.timings["gate"] = time.perf_counter() - t
            summary["gate"] = result.to_json()
            console.print(gate_table(result))
            console.print(result.verdict())
            if not result.passed:
                summary["outcome"] = "refused by the gate"
                raise SwapRefused(
                    result.verdict() + f"; the new index {record.building!r} is kept (still written to): rerun with "
                    "another --tolerance to swap, or `clipfuse alias abort` to drop it"
                )
        if on_step:
            on_step("verified", job)
        moved = job.swap(verified)
        summary["outcome"] = "swapped"
        summary["record"] = moved.to_json()
        summary["seconds"] = time.perf_counter() - started
        summary["timings"] = dict(job.timings)
        if on_step:
            on_step("swapped", job)
        return summary
    finally:
        summary.setdefault("timings", dict(job.timings))
        job.close()
        if owns_root:
            root.close()


def reindex_command(
    model: Annotated[str, typer.Option("--model", help="the new model: open_clip name, hf-hub:..., local-dir:...")],
    pretrained: Annotated[
        Optional[str], typer.Option(help="open_clip pretrained tag or checkpoint file of the new model")
    ] = None,
    index: IndexOpt = None,
    store: StoreOpt = None,
    images_root: Annotated[
        Optional[Path],
        typer.Option(
            "--images-root",
            help="folder the documents' relative image paths start from (the catalog's folder) [default: "
            "CLIPFUSE_SERVICE__CATALOG_ROOT, else a 'catalog' folder next to the store]",
        ),
    ] = None,
    gate: Annotated[
        Optional[tuple[Path, Path]],
        typer.Option("--gate", help="QUERIES.jsonl QRELS (the clipfuse eval formats): refuse a worse model"),
    ] = None,
    metric: Annotated[str, typer.Option(help="gate metric")] = "ndcg@10",
    gate_config: Annotated[str, typer.Option(help="gate configuration (a row of clipfuse eval)")] = "RRF k=60",
    tolerance: Annotated[float, typer.Option(help="how much worse the new model may be on the metric")] = 0.01,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would happen; change nothing")] = False,
    batch_size: Annotated[Optional[int], typer.Option(help="documents per batch [env CLIPFUSE_BATCH_SIZE]")] = None,
    report: Annotated[Optional[Path], typer.Option(help="write the report (rejections, timings) as JSON here")] = None,
    queue: Annotated[
        bool,
        typer.Option(
            "--queue",
            help="run it in the queue workers (they hold the engine and the GPU; needed for an embedded store "
            "a worker has open); the command waits for the swap",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="with --queue: how long to wait, in seconds")] = 24 * 3600,
    page_size: Annotated[
        int, typer.Option(help="documents read from the old index at a time (with --queue: per message)")
    ] = 512,
) -> None:
    """Re-embed every document with another model into a new index, verify it, gate it, swap the alias.

    Writes through the alias meanwhile reach both indexes; searches stay on the old index until the
    swap. Killed or refused, run it again: it resumes without re-embedding what is done.
    """
    extra = {"batch_size": batch_size} if batch_size else {}
    settings = settings_from_options(None, index, store, **extra)
    if pretrained is None and not model.startswith(("hf-hub:", "local-dir:")) and model != "clipfuse-demo":
        pretrained = settings.model.pretrained
    root_dir = images_root_for(settings.embedded_store, images_root or settings.service.catalog_root)
    try:
        if queue:
            from clipfuse.reindex.queue import run_queued

            summary = run_queued(
                settings,
                {
                    "model": model,
                    "pretrained": pretrained,
                    "images_root": str(root_dir.resolve()) if root_dir else None,
                    "gate": (str(gate[0].resolve()), str(gate[1].resolve())) if gate else None,
                    "metric": metric,
                    "gate_config": gate_config,
                    "tolerance": tolerance,
                    "dry_run": dry_run,
                    "page_size": page_size,
                },
                timeout_s=timeout,
            )
        else:
            summary = run_reindex(
                settings,
                model_name=model,
                pretrained=pretrained,
                images_root=root_dir.resolve() if root_dir else None,
                gate=gate,
                metric=metric,
                gate_config=gate_config,
                tolerance=tolerance,
                dry_run=dry_run,
                page_size=page_size,
            )
    except ClipfuseError as e:
        fail(e)
    if dry_run:
        console.print("dry run: nothing changed")
        return
    ingest = summary.get("report")
    if ingest is not None:
        print_report(ingest, None)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings"].items())
    rate = summary.get("docs_per_s")
    console.print(
        f"re-embedded {summary['copied']} documents ({summary['skipped']} already there)"
        + (f", {rate:.1f} docs/s" if rate else "")
        + (f"; {timings}" if timings else "")
    )
    v = summary["verify"]
    console.print(f"verified: {v['target']} documents in the new index, {v['source']} in the old, id sets equal")
    record = summary["record"]
    console.print(
        f"[bold green]swapped[/]: {record['alias']} -> {record['target']} (previous {record['previous']} kept: "
        "`clipfuse alias rollback` / `clipfuse alias prune`)"
    )
    if report is not None:
        out = {k: v for k, v in summary.items() if k != "report"}
        if ingest is not None:
            out["ingest"] = json.loads(ingest.model_dump_json())
        report.write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")


def _root(index: str | None, store: Path | None) -> tuple[Any, Backend]:
    settings = settings_from_options(None, index, store)
    return settings, build_backend(settings)


@alias_app.command("show")
def alias_show(index: IndexOpt = None, store: StoreOpt = None) -> None:
    """The alias, its target, the index being built and the previous one, with models and counts."""
    try:
        settings, root = _root(index, store)
        try:
            for line in describe_record(root, resolve_alias(root, settings.index), settings.index):
                console.print(line)
        finally:
            root.close()
    except ClipfuseError as e:
        fail(e)


@alias_app.command("rollback")
def alias_rollback(index: IndexOpt = None, store: StoreOpt = None) -> None:
    """Point the alias back at its previous index (kept up to date since the swap)."""
    try:
        settings, root = _root(index, store)
        try:
            moved = rollback(root, settings.index)
        finally:
            root.close()
    except ClipfuseError as e:
        fail(e)
    console.print(f"rolled back: {moved.alias} -> {moved.target} (previous {moved.previous})")


@alias_app.command("prune")
def alias_prune(index: IndexOpt = None, store: StoreOpt = None) -> None:
    """Drop the previous index (no rollback after this; writes stop going to it)."""
    try:
        settings, root = _root(index, store)
        try:
            _, dropped = prune(root, settings.index)
        finally:
            root.close()
    except ClipfuseError as e:
        fail(e)
    console.print(f"dropped {dropped}" if dropped else "no previous index to drop")


@alias_app.command("abort")
def alias_abort(index: IndexOpt = None, store: StoreOpt = None) -> None:
    """Stop a re-index: drop the index being built (the alias stays where it is)."""
    try:
        settings, root = _root(index, store)
        try:
            record = resolve_alias(root, settings.index)
            if record is None or record.building is None or not isinstance(root, Aliased):
                console.print("no re-index in progress")
                return
            building = record.building
            root.write_alias(AliasRecord(record.alias, record.target, record.previous, None))
            root.drop_index(building)
        finally:
            root.close()
    except ClipfuseError as e:
        fail(e)
    console.print(f"dropped {building}; {settings.index} still points at its target")


@alias_app.command("adopt")
def alias_adopt(index: IndexOpt = None, store: StoreOpt = None) -> None:
    """Turn a plain index (made before aliases) into a physical index behind an alias of the same name."""
    try:
        settings, root = _root(index, store)
        try:
            if not isinstance(root, Aliased):
                raise ClipfuseError(f"the {root.name} backend has no aliases")
            if root.read_alias(settings.index) is not None:
                console.print(f"{settings.index} is an alias already")
                return
            info = root.index_info()
            if info is None:
                raise ClipfuseError(f"{settings.index!r} does not exist")
            physical = physical_name(settings.index, info.model)
            root.adopt(settings.index, physical)
        finally:
            root.close()
    except ClipfuseError as e:
        fail(e)
    console.print(f"adopted: {settings.index} -> {physical}")


def register(main: typer.Typer) -> None:
    """Add ``reindex`` and ``alias`` to the main ``clipfuse`` app."""
    main.command("reindex")(reindex_command)
    main.add_typer(alias_app, name="alias")
