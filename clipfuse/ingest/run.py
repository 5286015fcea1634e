"""Indexing a catalog in-process: what ``clipfuse index``, the demo and eval run (no broker)."""

from __future__ import annotations

from pathlib import Path

from clipfuse.console import err, progress
from clipfuse.errors import ClipfuseError
from clipfuse.factory import build_writer
from clipfuse.plugin.protocol import Backend, Optimizable
from clipfuse.schemas import IngestReport
from clipfuse.settings import Settings
from clipfuse.sources import CatalogReader

__all__ = ["optimize_index", "run_index"]


def run_index(
    settings: Settings, path: Path, *, show_progress: bool = True, optimize: bool = True, explicit: bool = False
) -> IngestReport:
    """Index a JSONL catalog or a folder of images in-process (the CLI's and the demo's path).

    On an engine with an explicit index build (Qdrant Edge), the HNSW graphs are built
    once at the end of the bulk index (``optimize=False`` leaves that to ``clipfuse optimize``;
    searches are exact and correct either way, only slower on large catalogs).

    Writes go through the alias ``CLIPFUSE_INDEX`` (:class:`clipfuse.reindex.AliasWriter`): a fresh
    name is created behind an alias; during a re-index each document reaches both indexes.
    ``explicit``: the configured model was chosen by the user (the index must have been built with it).
    """
    if not path.exists():
        raise ClipfuseError(
            f"{path} does not exist: give a JSONL catalog (one document per line) or a folder of images"
        )
    base_dir = path if path.is_dir() else path.parent
    indexer = build_writer(settings, base_dir=base_dir, explicit=explicit)
    catalog = CatalogReader(path)
    total = catalog.count()
    try:
        with progress() as bar:
            task = bar.add_task(f"indexing {path.name}", total=total, visible=show_progress)
            report = indexer.index(catalog, on_batch=lambda r, n: bar.advance(task, n))
        for rejection in report.rejected:
            rejection.line = catalog.line_of(rejection.position)
        if optimize and report.indexed:
            optimize_index(indexer.backend, show_progress=show_progress)
    finally:
        indexer.close()
    return report


def optimize_index(backend: Backend, *, show_progress: bool = True) -> bool | None:
    """Build the engine's search index now (Qdrant Edge's HNSW graphs); ``None`` when it has nothing to build."""
    if not isinstance(backend, Optimizable):
        return None
    if not show_progress:
        return bool(backend.optimize())
    with err.status("building the search index (HNSW graphs; blocking, a minute per ~50k products on 2 cores)"):
        return bool(backend.optimize())
