"""Queue commands: ``clipfuse worker``, ``enqueue``, ``status``, ``dead-letters``.

Mounted into the main ``clipfuse`` command by :func:`register`; also runnable alone
as ``python -m clipfuse.workers.cli``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from clipfuse.console import console, err, fail
from clipfuse.console import progress as new_progress
from clipfuse.errors import ClipfuseError
from clipfuse.schemas.safetext import markup_safe
from clipfuse.settings import Settings
from clipfuse.sources import CatalogReader

__all__ = ["app", "dead_letters_app", "register"]


app = typer.Typer(
    help="clipfuse queue commands: run workers, enqueue catalogs, watch progress, replay dead letters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dead_letters_app = typer.Typer(
    help="Documents the workers rejected, with their reasons: list them, replay them after a fix, clear them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

IndexOpt = Annotated[
    Optional[str], typer.Option("--index", help="collection name [env CLIPFUSE_INDEX; default products]")
]
QueueOpt = Annotated[
    Optional[str], typer.Option("--queue", "-Q", help="queue name [env CLIPFUSE_BROKER__QUEUE; default clipfuse]")
]
BrokerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--broker",
        help="broker URL: redis://host:6379/0 or amqp://user:pass@host:5672// "
        "[env CLIPFUSE_BROKER__URL; default redis://127.0.0.1:6379/0]",
    ),
]


def _settings(index: str | None = None, queue: str | None = None, broker: str | None = None) -> Settings:
    settings = Settings()
    update: dict[str, Any] = {}
    if index:
        update["index"] = index
    if queue or broker:
        b: dict[str, Any] = {}
        if queue:
            b["queue"] = queue
        if broker:
            b["url"] = broker
        update["broker"] = settings.broker.model_copy(update=b)
    return settings.model_copy(update=update) if update else settings


def _safe(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def worker_command(
    options: dict[str, Any],
    *,
    pool: str = "solo",
    loglevel: str = "INFO",
    name: str | None = None,
    extra: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``celery worker`` command line and environment for ``clipfuse worker``'s options."""
    env = dict(os.environ)
    for key, value in options.items():
        if value is not None:
            env[key] = str(value)
    queue = env.get("CLIPFUSE_BROKER__QUEUE") or Settings().broker.queue
    device = env.get("CLIPFUSE_MODEL__DEVICE", "auto")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "clipfuse.workers.app",
        "worker",
        "--pool",
        pool,
        "--concurrency",
        "1",
        "-Q",
        queue,
        "-n",
        name or f"clipfuse-{device.replace(':', '')}@%h",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        *(extra or []),
    ]
    return argv, env


# -- worker ----------------------------------------------------------------------------------
def _store_env(store: Path | None, qdrant_url: str | None) -> dict[str, Any]:
    """The environment that puts the worker's engine (Edge or qdrant-client local) at ``store``."""
    if store is None:
        return {}
    base = Settings()
    if qdrant_url:
        base = base.model_copy(update={"qdrant": base.qdrant.model_copy(update={"url": qdrant_url})})
    try:
        chosen = base.with_store(store.resolve())
    except ClipfuseError as e:
        fail(e)
    out: dict[str, Any] = {"CLIPFUSE_EDGE__PATH": chosen.edge.path, "CLIPFUSE_QDRANT__PATH": chosen.qdrant.path}
    if chosen.backend != base.backend:
        out["CLIPFUSE_BACKEND"] = chosen.backend
    return out


def worker(
    ctx: typer.Context,
    queue: QueueOpt = None,
    broker: BrokerOpt = None,
    index: IndexOpt = None,
    device: Annotated[
        Optional[str], typer.Option(help="cuda, cuda:1, cpu ... one worker per GPU [env CLIPFUSE_MODEL__DEVICE]")
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(help="open_clip name, hf-hub:..., local-dir:..., clipfuse-demo [env CLIPFUSE_MODEL__NAME]"),
    ] = None,
    store: Annotated[
        Optional[Path],
        typer.Option(
            help="embedded store folder of the engine in use [env CLIPFUSE_EDGE__PATH, or CLIPFUSE_QDRANT__PATH "
            "with CLIPFUSE_BACKEND=qdrant; default clipfuse-data/edge]"
        ),
    ] = None,
    qdrant_url: Annotated[
        Optional[str], typer.Option("--qdrant-url", help="Qdrant server (production) [env CLIPFUSE_QDRANT__URL]")
    ] = None,
    batch_messages: Annotated[
        Optional[int], typer.Option(help="messages per batch [env CLIPFUSE_WORKER__BATCH_MESSAGES; default 16]")
    ] = None,
    flush_interval: Annotated[
        Optional[float],
        typer.Option(help="longest wait for a full batch, s [env CLIPFUSE_WORKER__FLUSH_INTERVAL_S; default 1]"),
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="documents per GPU batch [env CLIPFUSE_BATCH_SIZE; default 64]")
    ] = None,
    metrics_port: Annotated[
        Optional[int], typer.Option(help="Prometheus port, 0 = off [env CLIPFUSE_WORKER__METRICS_PORT]")
    ] = None,
    pool: Annotated[str, typer.Option(help="solo (default: one process, the safe choice) or threads")] = "solo",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="worker log level")] = "INFO",
    name: Annotated[
        Optional[str], typer.Option("--name", "-n", help="node name (default clipfuse-<device>@<host>)")
    ] = None,
) -> None:
    """Run one indexing worker: `celery -A clipfuse.workers.app worker` with clipfuse's defaults.

    Run one worker per GPU (`--device cuda:0`, `--device cuda:1`, ...), on as many hosts
    as you like against the same broker. Defaults: the solo pool (the batch runs in the
    process that holds the broker connection, so nothing is stranded if it dies), one
    concurrent batch, a prefetch that fills a batch, JSON only, late acknowledgement.
    Arguments after `--` go to Celery unchanged, e.g. `clipfuse worker -- --max-memory-per-child 0`.
    """
    if pool not in ("solo", "threads"):
        fail(f"--pool must be solo or threads, not {pool!r} (prefork strands a killed child's batch)")
    argv, env = worker_command(
        {
            **_store_env(store, qdrant_url),
            "CLIPFUSE_INDEX": index,
            "CLIPFUSE_BROKER__QUEUE": queue,
            "CLIPFUSE_BROKER__URL": broker,
            "CLIPFUSE_MODEL__DEVICE": device,
            "CLIPFUSE_MODEL__NAME": model,
            "CLIPFUSE_QDRANT__URL": qdrant_url,
            "CLIPFUSE_WORKER__BATCH_MESSAGES": batch_messages,
            "CLIPFUSE_WORKER__FLUSH_INTERVAL_S": flush_interval,
            "CLIPFUSE_BATCH_SIZE": batch_size,
            "CLIPFUSE_WORKER__METRICS_PORT": metrics_port,
        },
        pool=pool,
        loglevel=loglevel,
        name=name,
        extra=list(ctx.args),
    )
    err.print(f"[dim]{markup_safe(' '.join(argv[1:]))}[/]")
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


# -- enqueue ---------------------------------------------------------------------------------
def enqueue(
    path: Annotated[Path, typer.Argument(help="a JSONL catalog (one document per line) or a folder of images")],
    queue: QueueOpt = None,
    broker: BrokerOpt = None,
    index: IndexOpt = None,
    chunk_size: Annotated[
        Optional[int],
        typer.Option(help="documents per message [env CLIPFUSE_BROKER__DOCUMENTS_PER_MESSAGE; default 64]"),
    ] = None,
    report: Annotated[Optional[Path], typer.Option(help="write the full report (every refusal) as JSON here")] = None,
) -> None:
    """Validate a catalog and put it on the queue for the workers, with a progress bar.

    Bad documents are refused here, with their reasons, and not sent. Relative image
    paths are resolved against the catalog's folder and sent as absolute paths: the
    workers must be able to read them (or use URLs).
    """
    from clipfuse.workers.producer import EnqueueError
    from clipfuse.workers.producer import enqueue as send

    settings = _settings(index, queue, broker)
    if not path.exists():
        fail(f"{path} does not exist: give a JSONL catalog (one document per line) or a folder of images")
    catalog = CatalogReader(path)
    total = catalog.count()
    base_dir = path if path.is_dir() else path.parent
    progress = new_progress()
    try:
        with progress:  # every line is read and validated before the first message is sent
            checked = progress.add_task(f"validating {path.name}", total=total)
            sent = progress.add_task(f"sending {path.name}", total=total)
            result = send(
                catalog,
                settings=settings,
                chunk_size=chunk_size,
                base_dir=base_dir,
                on_validate=lambda n: progress.advance(checked, n),
                on_progress=lambda n: progress.advance(sent, n),
            )
            progress.update(sent, total=result.accepted)
    except EnqueueError as e:
        fail(e)
    except ClipfuseError as e:
        fail(e)
    for rejection in result.refused:
        rejection.line = catalog.line_of(rejection.position)
    console.print(
        f"[bold green]{result.accepted}[/] document{'' if result.accepted == 1 else 's'} sent in {result.messages} "
        f"message{'' if result.messages == 1 else 's'} to queue "
        f"[bold]{settings.broker.queue}[/] on {_safe(settings.broker.url)}; "
        f"[bold {'red' if result.refused else 'green'}]{len(result.refused)}[/] refused ({result.seconds:.1f}s)"
    )
    if result.refused:
        table = Table("line", "id", "code", "reason", title="refused (not sent)")
        for r in result.refused[:50]:
            line = r.line if r.line is not None else (r.position or 0) + 1
            table.add_row(str(line), markup_safe(r.id), markup_safe(r.code), markup_safe(r.reason))
        console.print(table)
        if len(result.refused) > 50:
            console.print(f"... and {len(result.refused) - 50} more (use --report)")
    if report is not None:
        report.write_text(result.model_dump_json(indent=2), encoding="utf-8")
        console.print(f"report written to {markup_safe(report)}")


# -- status ----------------------------------------------------------------------------------
def status(
    queue: QueueOpt = None,
    broker: BrokerOpt = None,
    index: IndexOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Show documents indexed, rejected and pending: counters, dead letters and the queue's depth."""
    from clipfuse.workers.deadletters import DeadLetters, state_url
    from clipfuse.workers.producer import queue_depth

    settings = _settings(index, queue, broker)
    out: dict[str, Any] = {"index": settings.index, "queue": settings.broker.queue}
    try:
        out["queue_depth"] = queue_depth(settings).model_dump()
    except Exception as e:
        out["queue_depth"] = {"error": f"cannot reach the broker {_safe(settings.broker.url)}: {e}"}
    try:
        store = DeadLetters.from_settings(settings)
        out["counters"] = store.stats()
        out["dead_letters"] = store.count()
        store.close()
    except Exception as e:
        out["counters"] = {"error": f"cannot reach the state store {_safe(state_url(settings))}: {e}"}
    if as_json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    depth = out["queue_depth"]
    console.print(f"index [bold]{settings.index}[/], queue [bold]{settings.broker.queue}[/]")
    if "error" in depth:
        console.print(f"  broker: [red]{depth['error']}[/]")
    else:
        line = f"  pending: [bold]{depth['pending']}[/] messages waiting on {depth['broker']}"
        if depth.get("in_flight") is not None:
            line += f", {depth['in_flight']} taken by workers (not yet acknowledged)"
        if depth.get("consumers") is not None:
            line += f", {depth['consumers']} consumer(s)"
        console.print(line)
    counters = out["counters"]
    if "error" in counters:
        console.print(f"  counters: [red]{counters['error']}[/]")
    else:
        console.print(
            f"  documents: [bold green]{counters['indexed']}[/] indexed (writes, redeliveries included), "
            f"[bold red]{counters['rejected']}[/] rejected by workers, {counters['deleted']} deleted, "
            f"{counters['enqueued']} enqueued, {counters['refused']} refused at the producer"
        )
        console.print(
            f"  dead letters: [bold]{out['dead_letters']}[/] (clipfuse dead-letters list); "
            f"retries {counters['retries']}, re-published {counters['republished']}, "
            f"returned {counters['returned']}, batches {counters['batches']}"
        )


# -- dead letters ----------------------------------------------------------------------------
@dead_letters_app.command("list")
def dead_letters_list(
    index: IndexOpt = None,
    limit: Annotated[Optional[int], typer.Option(help="show at most this many [default: all of them]")] = None,
    offset: Annotated[int, typer.Option(help="skip this many (newest first)")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines: key, id, code, stage, reason, at, document")
    ] = False,
) -> None:
    """List rejected documents, newest first, with the stage and the reason: all of them unless --limit."""
    from clipfuse.workers.deadletters import DeadLetters

    settings = _settings(index)
    try:
        store = DeadLetters.from_settings(settings)
        try:
            total = store.count()
            if as_json:  # streamed page by page: every dead letter of a large store, in bounded memory
                shown = 0
                for page in store.pages(offset=offset):
                    for letter in page[: None if limit is None else max(0, limit - shown)]:
                        record = {"key": letter.key, **letter.rejection.model_dump(mode="json")}
                        sys.stdout.write(json.dumps(record) + "\n")
                        shown += 1
                    if limit is not None and shown >= limit:
                        break
                return
            letters = store.list(limit=limit, offset=offset)
        finally:
            store.close()
    except Exception as e:
        fail(f"cannot read the dead-letter store: {e}")
    if not letters:
        console.print(f"no dead letters for index {settings.index}" + (f" past --offset {offset}" if offset else ""))
        return
    table = Table("id", "stage", "code", "reason", "at", title=f"dead letters of {settings.index}: {total}")
    for letter in letters:
        r = letter.rejection
        table.add_row(
            markup_safe(letter.key),
            r.stage,
            markup_safe(r.code),
            markup_safe(r.reason),
            r.at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    if total > offset + len(letters):
        console.print(f"... {total - offset - len(letters)} more (--offset {offset + len(letters)})")


@dead_letters_app.command("replay")
def dead_letters_replay(
    ids: Annotated[Optional[list[str]], typer.Option("--id", help="document id to replay (repeatable)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every dead letter")] = False,
    code: Annotated[
        Optional[list[str]], typer.Option("--code", help="only those rejected with this code, e.g. image_unreachable")
    ] = None,
    index: IndexOpt = None,
    queue: QueueOpt = None,
    broker: BrokerOpt = None,
) -> None:
    """Re-enqueue rejected documents after fixing the cause (an image host back up, a file restored...).

    A replayed document leaves the store once it is back on the queue; if the worker
    rejects it again, it comes back with the new reason.
    """
    from clipfuse.workers.deadletters import DeadLetters
    from clipfuse.workers.producer import enqueue as send

    if not ids and not all_ and not code:
        fail("say which: --id ID (repeatable), --code CODE, or --all")
    settings = _settings(index, queue, broker)
    try:
        store = DeadLetters.from_settings(settings)
        result = store.replay(lambda docs: send(docs, settings=settings), keys=ids or None, codes=code)
        store.close()
    except ClipfuseError as e:
        fail(e)
    console.print(f"[bold green]{len(result.replayed)}[/] re-enqueued to queue {settings.broker.queue}")
    for key, reason in result.still_invalid.items():
        console.print(f"[red]still invalid[/] {markup_safe(key)}: {markup_safe(reason)}")
    for key in result.not_replayable:
        console.print(
            f"[yellow]not replayable[/] {markup_safe(key)}: the document was too large to keep; re-send it from the source"
        )
    for key in result.missing:
        console.print(f"[yellow]not found[/] {markup_safe(key)}")


@dead_letters_app.command("clear")
def dead_letters_clear(
    index: IndexOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Delete every dead letter of the index (the counters stay)."""
    from clipfuse.workers.deadletters import DeadLetters

    settings = _settings(index)
    if not yes and not typer.confirm(f"delete every dead letter of {settings.index!r}?"):
        raise typer.Exit(1)
    store = DeadLetters.from_settings(settings)
    count = store.clear()
    store.close()
    console.print(f"{count} dead letters deleted")


def register(main: typer.Typer) -> None:
    """Add the queue commands to the main ``clipfuse`` app."""
    main.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(worker)
    main.command("enqueue")(enqueue)
    main.command("status")(status)
    main.add_typer(dead_letters_app, name="dead-letters")


register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
