"""Blue/green re-embedding behind an alias: build, catch up, verify, gate, swap.

Where the documents come from: the old index itself. Every document's payload keeps
its texts, its attributes and its image *references* (paths, relative to the catalog
folder as they were sent, and URLs), so a document is rebuilt from its payload and
re-embedded with the new model (paths are read under ``images_root``, the folder the
catalog's relative paths start from). Images sent inline (base64 ``data``) are not kept
by clipfuse (the payload only says ``"inline"``): such a document is rejected with code
``image_not_kept`` and the swap is refused while it is missing, until it is sent again
(it is then written to both indexes). Precomputed ``vectors`` are in the old model's
space and are not kept either: such a document is re-embedded from its images and texts.

The steps (each one safe to repeat, so a re-index killed at any point is simply run
again and resumes):

1. ``prepare``: create the new physical index ``<alias>--<model>-<hash>`` and record it
   as the alias's ``building`` index; from then on every write through the alias
   (workers, ``clipfuse index`` / ``delete``) reaches both indexes.
2. ``copy``: read the old index page by page and embed into the new one every document
   that the new one lacks or holds in another version (payload compared); documents
   already there are skipped, which is what makes a rerun resume without re-embedding.
3. ``verify``: compare the two id by id (and payload by payload); copy what is missing
   or stale, delete what the old one no longer has; repeat until they match and the
   counts agree.
4. ``gate`` (optional): evaluate both with the same queries and judgments; refuse when
   the new one is worse than the old one on the metric by more than the tolerance.
5. ``swap``: one alias move; the old index becomes ``previous`` (kept and still written
   until ``clipfuse alias prune``; ``clipfuse alias rollback`` moves back to it).

The half-built index is never searched: the alias points at the old one until the swap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipfuse.errors import ClipfuseError, ConfigurationError
from clipfuse.plugin.protocol import Aliased, AliasRecord, Backend, Scrollable, physical_name
from clipfuse.reindex.writer import IndexerLike, resolve_alias
from clipfuse.schemas import IngestReport, Rejection

__all__ = ["ReindexPlan", "Reindexer", "SwapRefused", "VerifyResult", "document_of", "prune", "rollback"]

log = logging.getLogger(__name__)

_TEXT_KEYS = ("title", "caption", "description")


class SwapRefused(ClipfuseError):
    """The new index is not ready to serve (incomplete, or worse on the gate)."""


def document_of(doc_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The document a payload was made from (see :func:`clipfuse.ingest.pipeline.document_payload`)."""
    doc: dict[str, Any] = {"id": doc_id}
    for key in _TEXT_KEYS:
        if payload.get(key) is not None:
            doc[key] = payload[key]
    images: list[dict[str, Any]] = []
    for ref in payload.get("images") or []:
        ref = str(ref)
        if ref == "inline":
            images.append({"inline": True})
        elif ref.lower().startswith(("http://", "https://")):
            images.append({"url": ref})
        else:
            images.append({"path": ref})
    if images:
        doc["images"] = images
    attributes = {k: v for k, v in payload.items() if k not in (*_TEXT_KEYS, "images")}
    if attributes:
        doc["attributes"] = attributes
    return doc


def _inline_rejection(doc: dict[str, Any]) -> Rejection | None:
    if any(img.get("inline") for img in doc.get("images", [])):
        return Rejection(
            id=doc["id"],
            code="image_not_kept",
            reason="its image was sent inline (base64) and clipfuse keeps only image references: send the document "
            "again (it is written to both indexes during the re-index), by path or URL, then rerun the re-index",
            stage="load",
        )
    return None


@dataclass
class ReindexPlan:
    alias: str
    source: str
    target: str
    source_model: str | None
    target_model: str
    source_documents: int
    target_documents: int
    #: the name is a plain index (made before aliases): it is adopted first
    adopt: bool = False
    resumed: bool = False

    def lines(self) -> list[str]:
        out = []
        if self.adopt:
            out.append(f"adopt the plain index {self.alias!r}: rename it {self.source!r}, alias {self.alias!r} -> it")
        out.append(
            f"{'resume' if self.resumed else 'build'} {self.target!r} with model {self.target_model} "
            f"({self.target_documents} of {self.source_documents} documents already there)"
        )
        out.append(f"re-embed documents of {self.source!r} (model {self.source_model}) that {self.target!r} lacks")
        out.append("writes through the alias meanwhile go to both indexes")
        out.append("verify id by id and payload by payload, counts equal")
        out.append(f"swap: {self.alias!r} -> {self.target!r}; {self.source!r} kept for `clipfuse alias rollback`")
        return out


@dataclass
class VerifyResult:
    source_count: int = 0
    target_count: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    rounds: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.extra) and self.source_count == self.target_count

    def summary(self) -> dict[str, int]:
        """The counts the CLI prints and the queued job's status records."""
        return {
            "source": self.source_count,
            "target": self.target_count,
            "missing": len(self.missing),
            "stale": len(self.stale),
            "extra": len(self.extra),
            "rounds": self.rounds,
        }


class Reindexer:
    """Re-embeds the documents behind ``alias`` into a new physical index for another model.

    ``root``: a backend of the engine (any index of it: it is used for its alias
    capability). ``indexer_for(backend, model_id)``: an indexer for one physical index,
    embedding with that model (the new model's embedder for the new index). The in-process
    CLI runs :meth:`run`; the queue workers run the same steps one message at a time.
    """

    def __init__(
        self,
        root: Backend,
        alias: str,
        *,
        model_id: str,
        indexer_for: Callable[[Backend, str | None], IndexerLike],
        page_size: int = 512,
    ) -> None:
        if not isinstance(root, Aliased):
            raise ConfigurationError(f"the {root.name} backend has no aliases: it cannot re-index behind one")
        self.root = root
        self.alias = alias
        self.model_id = model_id
        self.indexer_for = indexer_for
        self.page_size = page_size
        self.timings: dict[str, float] = {}
        self._backends: dict[str, Backend] = {}
        self._indexer: IndexerLike | None = None

    # -- helpers ---------------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        backend = self._backends.get(name)
        if backend is None:
            assert isinstance(self.root, Aliased)
            backend = self._backends[name] = self.root.open_index(name)
        return backend

    def record(self) -> AliasRecord | None:
        return resolve_alias(self.root, self.alias)

    def _scroll(self, backend: Backend) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        if not isinstance(backend, Scrollable):
            raise ConfigurationError(f"the {backend.name} backend cannot list its documents")
        offset: Any = None
        while True:
            page, offset = backend.scroll_payloads(offset, self.page_size)
            if page:
                yield page
            if offset is None or not page:
                return

    def _timed(self, stage: str, started: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    def indexer(self) -> IndexerLike:
        """The new index's indexer (new model)."""
        if self._indexer is None:
            record = self.record()
            target = record.building if record and record.building else physical_name(self.alias, self.model_id)
            self._indexer = self.indexer_for(self.backend(target), self.model_id)
        return self._indexer

    # -- 0. plan (no writes) ------------------------------------------------------------------
    def plan(self) -> ReindexPlan:
        assert isinstance(self.root, Aliased)
        record = self.record()
        adopt = False
        if record is None:
            info = self.root.index_info()
            if info is None:
                raise ConfigurationError(f"{self.alias!r} does not exist: index a catalog first (clipfuse index PATH)")
            adopt = True
            source, source_model = physical_name(self.alias, info.model), info.model
            source_count = self.root.count()
        else:
            source = record.target
            info = self.backend(source).index_info()
            source_model = info.model if info else None
            source_count = self.backend(source).count()
        target = physical_name(self.alias, self.model_id)
        if target == source:
            raise ConfigurationError(
                f"{self.alias!r} already points at {source!r}, built with model {self.model_id}: nothing to re-index"
            )
        if record is not None and record.previous == target:
            raise ConfigurationError(
                f"{target!r} (model {self.model_id}) is the previous index of {self.alias!r}: "
                "`clipfuse alias rollback` returns to it at once, or `clipfuse alias prune` drops it first"
            )
        if record is not None and record.building not in (None, target):
            raise ConfigurationError(
                f"a re-index of {self.alias!r} into {record.building!r} is in progress: rerun it with its model to "
                f"finish it, or `clipfuse alias abort` to drop it"
            )
        exists = self.root.index_exists(target)
        if exists and (record is None or record.building != target):
            raise ConfigurationError(
                f"{target!r} exists but is not being built for {self.alias!r}: drop it first or choose another model"
            )
        return ReindexPlan(
            alias=self.alias,
            source=source,
            target=target,
            source_model=source_model,
            target_model=self.model_id,
            source_documents=source_count,
            target_documents=self.backend(target).count() if exists else 0,
            adopt=adopt,
            resumed=exists,
        )

    # -- 1. prepare ----------------------------------------------------------------------------
    def prepare(self) -> AliasRecord:
        """Adopt a plain index, create the new index, record it as ``building`` (writes go to both)."""
        assert isinstance(self.root, Aliased)
        started = time.perf_counter()
        plan = self.plan()
        if plan.adopt:
            self.root.adopt(self.alias, plan.source)
            self._backends.clear()
        record = self.record()
        assert record is not None
        if record.building != plan.target:
            indexer = self.indexer()
            indexer.ensure_schema()
            source_info = self.backend(record.target).index_info()
            if source_info is not None and source_info.fields:
                indexer.backend.register_fields(source_info.fields)
            record = AliasRecord(alias=self.alias, target=record.target, previous=record.previous, building=plan.target)
            self.root.write_alias(record)
        self._timed("prepare", started)
        return record

    # -- 2. copy ---------------------------------------------------------------------------------
    def _to_copy(self, page: Sequence[tuple[str, dict[str, Any]]], target: Backend) -> list[tuple[str, dict[str, Any]]]:
        assert isinstance(target, Scrollable)
        have = target.get_payloads([doc_id for doc_id, _ in page])
        return [(doc_id, payload) for doc_id, payload in page if have.get(doc_id) != payload]

    def copy_page(self, offset: Any) -> tuple[IngestReport, int, int, Any]:
        """One page of :meth:`copy` (what a queue worker runs per message): read the page of the old
        index at ``offset``, embed what the new one lacks; (report, documents read, skipped, next offset
        or None at the end)."""
        started = time.perf_counter()
        record = self.record()
        if record is None or record.building is None:
            raise ConfigurationError(f"no re-index of {self.alias!r} is prepared")
        source, indexer = self.backend(record.target), self.indexer()
        if not isinstance(source, Scrollable):
            raise ConfigurationError(f"the {source.name} backend cannot list its documents")
        page, next_offset = source.scroll_payloads(offset, self.page_size)
        todo = self._to_copy(page, indexer.backend)
        rejected: list[Rejection] = []
        docs = []
        for doc_id, payload in todo:
            doc = document_of(doc_id, payload)
            refusal = _inline_rejection(doc)
            if refusal is not None:
                rejected.append(refusal)
            else:
                docs.append(doc)
        report = indexer.index(docs) if docs else IngestReport()
        self._timed("copy", started)
        return report.merge(IngestReport(rejected=rejected)), len(page), len(page) - len(todo), next_offset

    def copy(self, *, on_batch: Callable[[IngestReport, int], None] | None = None) -> tuple[IngestReport, int]:
        """Embed into the new index every document of the old one it lacks; (report, documents skipped)."""
        started = time.perf_counter()
        record = self.record()
        if record is None or record.building is None:
            raise ConfigurationError(f"no re-index of {self.alias!r} is prepared")
        source, indexer = self.backend(record.target), self.indexer()
        skipped = 0
        rejected: list[Rejection] = []

        def documents() -> Iterator[dict[str, Any]]:
            nonlocal skipped
            pages = self._scroll(source)
            while True:
                t = time.perf_counter()
                page = next(pages, None)
                self._timed("copy: read old", t)
                if page is None:
                    return
                t = time.perf_counter()
                todo = self._to_copy(page, indexer.backend)
                self._timed("copy: compare new", t)
                skipped += len(page) - len(todo)
                if on_batch is not None and len(page) > len(todo):
                    on_batch(IngestReport(), len(page) - len(todo))
                for doc_id, payload in todo:
                    doc = document_of(doc_id, payload)
                    refusal = _inline_rejection(doc)
                    if refusal is not None:
                        rejected.append(refusal)
                        continue
                    yield doc

        report = indexer.index(documents(), on_batch=on_batch)
        report = report.merge(IngestReport(rejected=rejected))
        self._timed("copy", started)
        return report, skipped

    # -- 3. verify -------------------------------------------------------------------------------
    def verify(self, *, fix: bool = True, max_rounds: int = 5) -> VerifyResult:
        """Compare old and new id by id and payload by payload; with ``fix``, repair and repeat until equal."""
        started = time.perf_counter()
        record = self.record()
        if record is None or record.building is None:
            raise ConfigurationError(f"no re-index of {self.alias!r} is prepared")
        source, indexer = self.backend(record.target), self.indexer()
        target = indexer.backend
        result = VerifyResult()
        for round_number in range(1, max_rounds + 1):
            result = VerifyResult(rounds=round_number)
            source_ids: set[str] = set()
            for page in self._scroll(source):
                source_ids.update(doc_id for doc_id, _ in page)
                assert isinstance(target, Scrollable)
                have = target.get_payloads([doc_id for doc_id, _ in page])
                bad = []
                for doc_id, payload in page:
                    if doc_id not in have:
                        result.missing.append(doc_id)
                    elif have[doc_id] != payload:
                        result.stale.append(doc_id)
                    else:
                        continue
                    bad.append(document_of(doc_id, payload))
                todo = [doc for doc in bad if _inline_rejection(doc) is None]
                if fix and todo:
                    indexer.index_batch(todo)
            for page in self._scroll(target):
                result.extra.extend(doc_id for doc_id, _ in page if doc_id not in source_ids)
            if fix and result.extra:
                indexer.delete(result.extra)
            result.source_count, result.target_count = source.count(), target.count()
            if result.ok or not fix:
                break
            if not (result.missing or result.stale or result.extra):
                continue  # counts differ only: an engine that counts lazily; look again
            # repaired this round: look again (a write may have landed meanwhile)
        self._timed("verify", started)
        return result

    # -- 5. swap ---------------------------------------------------------------------------------
    def swap(self, verified: VerifyResult) -> AliasRecord:
        """Move the alias to the new index in one step (refused unless ``verified.ok``)."""
        assert isinstance(self.root, Aliased)
        if not verified.ok:
            raise SwapRefused(
                f"the new index does not match the old one yet ({len(verified.missing)} missing, "
                f"{len(verified.stale)} stale, {len(verified.extra)} extra, counts {verified.target_count} vs "
                f"{verified.source_count}): the alias stays on the old index; rerun to resume"
            )
        started = time.perf_counter()
        record = self.record()
        assert record is not None and record.building is not None
        moved = AliasRecord(alias=self.alias, target=record.building, previous=record.target, building=None)
        self.root.write_alias(moved)
        self._timed("swap", started)
        return moved

    def abort(self) -> AliasRecord | None:
        """Stop building: drop the half-built index, the alias stays where it is."""
        assert isinstance(self.root, Aliased)
        record = self.record()
        if record is None or record.building is None:
            return record
        building = record.building
        kept = AliasRecord(alias=self.alias, target=record.target, previous=record.previous, building=None)
        self.root.write_alias(kept)
        self._close_backend(building)
        self.root.drop_index(building)
        return kept

    def _close_backend(self, name: str) -> None:
        backend = self._backends.pop(name, None)
        if self._indexer is not None and self._indexer.backend is backend:
            self._indexer.close()
            self._indexer = None
        if backend is not None and backend is not self.root:
            backend.close()

    def close(self) -> None:
        if self._indexer is not None:
            self._indexer.close()
            self._indexer = None
        for name in list(self._backends):
            self._close_backend(name)


def rollback(root: Backend, alias: str) -> AliasRecord:
    """Point ``alias`` back at its previous index (which was kept up to date); the current one becomes previous."""
    if not isinstance(root, Aliased):
        raise ConfigurationError(f"the {root.name} backend has no aliases")
    record = root.read_alias(alias)
    if record is None or record.previous is None:
        raise ConfigurationError(f"{alias!r} has no previous index to roll back to")
    if record.building is not None:
        raise ConfigurationError(
            f"a re-index of {alias!r} into {record.building!r} is in progress: finish it or abort it first"
        )
    moved = AliasRecord(alias=alias, target=record.previous, previous=record.target)
    root.write_alias(moved)
    return moved


def prune(root: Backend, alias: str) -> tuple[AliasRecord, str | None]:
    """Drop the previous index of ``alias`` (no rollback after this); (new record, the index dropped)."""
    if not isinstance(root, Aliased):
        raise ConfigurationError(f"the {root.name} backend has no aliases")
    record = root.read_alias(alias)
    if record is None:
        raise ConfigurationError(f"{alias!r} is not an alias")
    if record.previous is None:
        return record, None
    kept = AliasRecord(alias=alias, target=record.target, building=record.building)
    root.write_alias(kept)
    root.drop_index(record.previous)
    return kept, record.previous


def images_root_for(store: Path | None, configured: Path | None) -> Path | None:
    """Where relative image paths are read: the configured catalog folder, else ``catalog`` next to the store."""
    if configured is not None:
        return configured
    if store is not None and (store.parent / "catalog").is_dir():
        return store.parent / "catalog"
    return None
