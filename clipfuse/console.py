"""The terminal side of the commands: the rich consoles, failing with a message, progress bars,
tables of hits and ingest reports, settings from the common command-line options.

One module that ``clipfuse`` (:mod:`clipfuse.cli`), the demo, eval, reindex, bench and the
queue commands share, so none of them imports another command's helpers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from clipfuse.errors import ClipfuseError
from clipfuse.schemas import IngestReport, SearchResponse
from clipfuse.schemas.safetext import markup_safe
from clipfuse.settings import DEMO_MODEL, Settings

__all__ = [
    "DEMO_STORE",
    "console",
    "err",
    "fail",
    "missing_index",
    "print_hits",
    "print_report",
    "progress",
    "settings_from_options",
]

#: results (stdout)
console = Console()
#: progress, status and errors (stderr)
err = Console(stderr=True)


def fail(error: Exception | str) -> NoReturn:
    """Print ``error`` on stderr and exit with status 2."""
    err.print(f"[bold red]error:[/] {markup_safe(error)}")
    raise typer.Exit(2)


def settings_from_options(
    model: str | None = None, index: str | None = None, store: Path | None = None, **extra: Any
) -> Settings:
    """Settings from the environment, overridden by the ``--model``, ``--index`` and ``--store`` options
    (and any other fields in ``extra``); sets up logging at the configured level."""
    settings = Settings()
    update: dict[str, Any] = dict(extra)
    if index:
        update["index"] = index
    if model:
        pretrained = (
            None if model in (DEMO_MODEL,) or model.startswith(("hf-hub:", "local-dir:")) else settings.model.pretrained
        )
        update["model"] = settings.model.model_copy(update={"name": model, "pretrained": pretrained})
    settings = settings.model_copy(update=update)
    if store:
        try:
            settings = settings.with_store(store)
        except ClipfuseError as e:
            fail(e)
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    return settings


#: where ``clipfuse demo`` puts its store when run with its default ``--dir``
DEMO_STORE = Path("clipfuse-data/demo/store")


def missing_index(settings: Settings) -> str:
    """What to say when ``settings.index`` does not exist: how to make it, and where the demo's
    store is when the user ran the demo and forgot ``--store``."""
    message = f"index {settings.index!r} does not exist yet: run `clipfuse index PATH` (or `clipfuse demo`) first"
    store = settings.embedded_store
    if store is not None and DEMO_STORE.is_dir() and store.resolve() != DEMO_STORE.resolve():
        message += f"; the demo's index is in {DEMO_STORE}: add --store {DEMO_STORE}"
    elif store is not None:
        message += f" (store {store})"
    return message


def progress() -> Progress:
    """A progress bar on stderr: description, bar, done / total, elapsed, remaining."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def print_report(report: IngestReport, report_path: Path | None) -> None:
    """An ingest report: counts and stage times, the first 50 rejections; the whole report as JSON
    at ``report_path`` when given."""
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items())
    console.print(
        f"[bold green]{report.indexed}[/] indexed, [bold {'red' if report.rejected else 'green'}]"
        f"{len(report.rejected)}[/] rejected in {report.seconds:.1f}s" + (f" ({stages})" if stages else "")
    )
    if report.rejected:
        table = Table("line", "id", "stage", "code", "reason", title="rejected documents", show_lines=False)
        for r in report.rejected[:50]:
            line = "" if r.line is None else str(r.line)
            table.add_row(line, markup_safe(r.id), r.stage, markup_safe(r.code), markup_safe(r.reason))
        console.print(table)
        if len(report.rejected) > 50:
            console.print(f"... and {len(report.rejected) - 50} more")
    if report_path is not None:
        report_path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
        console.print(f"full report written to {markup_safe(report_path)}")


#: below this many columns the attributes go under the title instead of in a column of their own
WIDE_TABLE = 120
_TEXT_FIELDS = ("title", "caption", "description", "images")


def _attributes(payload: dict[str, Any], limit: int) -> str:
    """``k=v, k=v, ...`` of a hit's attributes, cut after the last whole ``k=v`` that fits ``limit``."""
    items = [f"{k}={v}" for k, v in payload.items() if k not in _TEXT_FIELDS]
    out = ""
    for item in items:
        piece = f", {item}" if out else item
        if len(out) + len(piece) > limit:
            return f"{out}, …" if out else f"{item[: limit - 1]}…"
        out += piece
    return out


def print_hits(response: SearchResponse, *, title: str, explain: bool = False) -> None:
    """A search response: one row per hit with each signal's score (and, with ``explain``, how the
    score was made), then totals, facets and the next page's cursor.

    Below :data:`WIDE_TABLE` columns (a terminal of 80, a pipe) the attributes are a dim line under
    the title, cut at a whole ``k=v``, rather than a column folded into fragments."""
    wide = console.width >= WIDE_TABLE
    table = Table(
        title=title,
        title_justify="left",
        box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD,
        show_edge=wide,
        pad_edge=wide,
        collapse_padding=not wide,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("id", overflow="fold")
    table.add_column("title" if wide else "title / attributes", ratio=1 if wide else None)
    if wide:
        table.add_column("attributes", ratio=1)
    for column in ("score", "image", "text", "bm25"):
        table.add_column(column, justify="right", no_wrap=True)
    # what the attributes may take: about two lines of the title cell when narrow
    attr_limit = 80 if wide else max(40, 2 * (console.width - 44))
    for hit in response.hits:
        p = hit.payload
        attrs = _attributes(p, attr_limit)

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        marks = []
        if hit.rule:
            marks.append(f"[magenta]rule {markup_safe(hit.rule)}[/]")
        if hit.variants:
            marks.append(
                f"[cyan]+{len(hit.variants)} variants: {markup_safe(', '.join(v.id for v in hit.variants[:4]))}[/]"
            )
        cell = markup_safe(str(p.get("title", ""))[:60]) + ("\n" + " ".join(marks) if marks else "")
        if not wide and attrs:
            cell += f"\n[dim]{markup_safe(attrs)}[/]"
        scores = (f"{hit.score:.4f}", fmt(hit.signals.image), fmt(hit.signals.text), fmt(hit.signals.bm25))
        table.add_row(str(hit.rank), markup_safe(hit.id), cell, *([markup_safe(attrs)] if wide else []), *scores)
        if explain and hit.explanation is not None:
            e = hit.explanation
            parts = [f"{name} #{s.rank} {s.raw:.3f} -> {s.contribution:+.4f}" for name, s in e.signals.items()]
            line = f"fused {e.fused:.4f} = " + " ".join(parts)
            if e.normalised is not None:
                line += f"; normalised {e.normalised:.3f}"
                line += "".join(f"; {b.boost} {b.contribution:+.3f}" for b in e.boosts)
            blanks = [""] * (len(table.columns) - 3)
            table.add_row("", "", f"[dim]{markup_safe(line)} => {e.final:.4f}[/]", *blanks)
    if response.hits:
        console.print(table)
    else:
        console.print(f"{markup_safe(title)}: [bold]no hits[/] (check the filters: clipfuse info lists the fields)")
    total = response.total
    summary = f"{response.fusion} fusion by the {response.fused_by}, {response.took_ms:.0f} ms"
    if total is not None:
        summary = f"{'at least ' if total.relation == 'gte' else ''}{total.value:,} results; " + summary
    if response.collapsed_by:
        summary += f"; one hit per {response.collapsed_by}"
    if response.rules_applied:
        summary += f"; rules: {markup_safe(', '.join(response.rules_applied))}"
    console.print(f"[dim]{markup_safe(summary)}[/]")
    for name, counts in response.facets.items():
        values = ", ".join(f"{value} ({count})" for value, count in counts.items())
        console.print(f"  [bold]{markup_safe(name)}[/]: {markup_safe(values or '-')}")
    for name, stats in response.facets_stats.items():
        console.print(
            f"  [bold]{markup_safe(name)}[/]: {stats.min:g} - {stats.max:g}, avg {stats.avg:.2f} ({stats.count})"
        )
    if response.next_cursor:
        console.print(f"[dim]next page: --cursor {response.next_cursor}[/]")
