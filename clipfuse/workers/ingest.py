"""The ingest core: validate, load images, embed, encode BM25, upsert, report.

Pure Python (no Celery): the CLI runs it in-process, the Celery tasks call it
from workers. A document that cannot be processed is rejected alone, with a
reason; the rest of its batch lands. Engine outages (:class:`BackendUnavailable`)
are *not* rejections: they propagate so the caller retries the whole batch
(upserts are idempotent, so a retry is harmless).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
from PIL.Image import Image

from clipfuse.embedding import Embedder, l2_normalize
from clipfuse.errors import EmbeddingError, InvalidDocument
from clipfuse.images import ImageLoader
from clipfuse.plugin.bm25 import Bm25Encoder
from clipfuse.plugin.filters import field_type_of
from clipfuse.plugin.protocol import Backend, IndexedDocument
from clipfuse.schemas import Document, FieldType, IngestReport, Rejection, Stage, parse_document

__all__ = ["Indexer", "batched", "document_payload"]

log = logging.getLogger(__name__)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def document_payload(doc: Document) -> dict[str, Any]:
    """What a hit shows: texts, image references (never inline bytes), attributes at the top level."""
    payload: dict[str, Any] = {
        "title": doc.title,
        "caption": doc.caption,
        "description": doc.description,
        "images": [img.path or img.url or "inline" for img in doc.images],
    }
    payload.update(doc.attributes)
    return {k: v for k, v in payload.items() if v is not None}


@dataclass
class _Item:
    position: int
    raw: Any
    doc: Document
    images: list[Image] = field(default_factory=list)


class Indexer:
    """Runs documents through the pipeline into a backend.

    One instance per process: it holds the loaded model (via ``embedder``).
    """

    def __init__(
        self,
        embedder: Embedder,
        backend: Backend,
        *,
        loader: ImageLoader | None = None,
        bm25: Bm25Encoder | None = None,
        batch_size: int = 64,
        load_workers: int = 8,
    ) -> None:
        self.embedder = embedder
        self.backend = backend
        self.loader = loader or ImageLoader()
        self.bm25 = bm25 if bm25 is not None else (Bm25Encoder() if backend.lexical == "sparse" else None)
        self.batch_size = batch_size
        self.load_workers = load_workers
        self._schema_ready = False
        self._fields: dict[str, FieldType] = {}

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        self.backend.ensure_schema(dim=self.embedder.dim, model=self.embedder.model_id)
        info = self.backend.index_info()
        self._fields = dict(info.fields) if info else {}
        self._schema_ready = True

    # -- public ----------------------------------------------------------------------
    def index(
        self,
        documents: Iterable[Document | dict[str, Any]],
        *,
        on_batch: Callable[[IngestReport, int], None] | None = None,
    ) -> IngestReport:
        """Index any number of documents in batches of ``batch_size``; one merged report."""
        total = IngestReport()
        for chunk in batched(documents, self.batch_size):
            report = self.index_batch(chunk)
            total = total.merge(report)
            if on_batch is not None:
                on_batch(report, len(chunk))
        return total

    def delete(self, ids: Sequence[str]) -> IngestReport:
        started = time.perf_counter()
        self.ensure_schema()
        self.backend.delete(list(ids))
        return IngestReport(deleted=len(ids), seconds=time.perf_counter() - started)

    def index_batch(self, raws: Sequence[Document | dict[str, Any]]) -> IngestReport:
        """Index one batch; bad documents are rejected alone, engine outages raise."""
        started = time.perf_counter()
        self.ensure_schema()
        stages: dict[str, float] = {}
        rejected: list[Rejection] = []

        def reject(position: int | None, raw: Any, error: InvalidDocument, stage: Stage, doc_id: str | None) -> None:
            rejected.append(
                Rejection(
                    id=doc_id or error.doc_id,
                    code=error.code,
                    reason=error.message,
                    stage=stage,
                    position=position,
                    document=Rejection.keepable(raw.model_dump(mode="json") if isinstance(raw, Document) else raw),
                )
            )

        # 1. validate, keep the last version of a repeated id
        t = time.perf_counter()
        items: list[_Item] = []
        for position, raw in enumerate(raws):
            try:
                items.append(_Item(position, raw, parse_document(raw)))
            except InvalidDocument as e:
                reject(position, raw, e, "validate", None)
        last_position = {item.doc.id: item.position for item in items}
        kept = []
        for item in items:
            if last_position[item.doc.id] != item.position:
                reject(
                    item.position,
                    item.raw,
                    InvalidDocument(
                        f"id {item.doc.id!r} appears again later in the same batch (position "
                        f"{last_position[item.doc.id]}); this earlier copy was skipped, the later one indexed",
                        code="duplicate_id",
                    ),
                    "validate",
                    item.doc.id,
                )
            else:
                kept.append(item)
        items = self._check_attribute_types(kept, reject)
        stages["validate"] = time.perf_counter() - t

        # 2. load images (I/O bound: threads)
        t = time.perf_counter()
        items = self._load_images(items, reject)
        stages["load"] = time.perf_counter() - t

        # 3. embed images, then texts
        t = time.perf_counter()
        image_vectors, items = self._embed_images(items, reject)
        stages["embed_images"] = time.perf_counter() - t
        t = time.perf_counter()
        with_text = [item for item in items if item.doc.text.strip()]
        text_matrix = self.embedder.embed_texts([item.doc.text for item in with_text]) if with_text else None
        text_vectors = (
            {item.doc.id: text_matrix[i] for i, item in enumerate(with_text)} if text_matrix is not None else {}
        )
        stages["embed_texts"] = time.perf_counter() - t

        # 4. BM25 (engines that need sparse vectors)
        t = time.perf_counter()
        sparse = {}
        if self.bm25 is not None and with_text:
            for item, vec in zip(with_text, self.bm25.encode_documents([i.doc.text for i in with_text]), strict=True):
                sparse[item.doc.id] = vec
        stages["bm25"] = time.perf_counter() - t

        # 5. upsert
        t = time.perf_counter()
        new_fields = {
            name: field_type_of(value)
            for item in items
            for name, value in item.doc.attributes.items()
            if name not in self._fields and not (isinstance(value, list) and not value)
        }
        if new_fields:
            self.backend.register_fields(new_fields)
            self._fields.update(new_fields)
        prepared = [
            IndexedDocument(
                id=item.doc.id,
                payload=document_payload(item.doc),
                image_vector=image_vectors.get(item.doc.id),
                text_vector=text_vectors.get(item.doc.id),
                sparse=sparse.get(item.doc.id),
                text=item.doc.text or None,
            )
            for item in items
        ]
        failures = self.backend.upsert(prepared) if prepared else {}
        for item in items:
            if item.doc.id in failures:
                reject(
                    item.position,
                    item.raw,
                    InvalidDocument(
                        f"the search engine refused the document: {failures[item.doc.id]}", code="engine_refused"
                    ),
                    "upsert",
                    item.doc.id,
                )
        stages["upsert"] = time.perf_counter() - t
        indexed = len(items) - sum(1 for item in items if item.doc.id in failures)
        rejected.sort(key=lambda r: (r.position is None, r.position))
        return IngestReport(
            indexed=indexed, rejected=rejected, stage_seconds=stages, seconds=time.perf_counter() - started
        )

    # -- stages ------------------------------------------------------------------------
    def _check_attribute_types(self, items: list[_Item], reject: Callable[..., None]) -> list[_Item]:
        """An attribute must keep one type across the index (or its filters would lie)."""
        seen: dict[str, FieldType] = dict(self._fields)
        kept = []
        for item in items:
            problem = None
            for name, value in item.doc.attributes.items():
                if isinstance(value, list) and not value:
                    continue
                kind = field_type_of(value)
                expected = seen.get(name)
                if expected is not None and expected != kind:
                    problem = (
                        f"attribute {name!r} is {kind} here but {expected} in this index; "
                        f"send {expected} values for {name!r} (or use another attribute name)"
                    )
                    break
            if problem:
                reject(
                    item.position, item.raw, InvalidDocument(problem, code="attribute_type"), "validate", item.doc.id
                )
                continue
            for name, value in item.doc.attributes.items():
                if not (isinstance(value, list) and not value):
                    seen.setdefault(name, field_type_of(value))
            kept.append(item)
        return kept

    def _load_one(self, item: _Item) -> list[Image] | InvalidDocument:
        images = []
        for number, source in enumerate(item.doc.images, start=1):
            try:
                images.append(self.loader.load(source))
            except InvalidDocument as e:
                which = f"image {number} of {len(item.doc.images)} ({source.describe()[:200]})"
                return InvalidDocument(f"{which}: {e.message}", code=e.code, doc_id=item.doc.id)
        return images

    def _load_images(self, items: list[_Item], reject: Callable[..., None]) -> list[_Item]:
        needing = [item for item in items if item.doc.images]
        if not needing:
            return items
        workers = max(1, min(self.load_workers, len(needing)))
        if workers == 1:
            results = [self._load_one(item) for item in needing]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clipfuse-load") as pool:
                results = list(pool.map(self._load_one, needing))
        failed = set()
        for item, result in zip(needing, results, strict=True):
            if isinstance(result, InvalidDocument):
                reject(item.position, item.raw, result, "load", item.doc.id)
                failed.add(item.position)
            else:
                item.images = result
        return [item for item in items if item.position not in failed]

    def _embed_images(
        self, items: list[_Item], reject: Callable[..., None]
    ) -> tuple[dict[str, np.ndarray], list[_Item]]:
        with_images = [item for item in items if item.images]
        if not with_images:
            return {}, items
        flat = [img for item in with_images for img in item.images]
        try:
            matrix = self.embedder.embed_images(flat)
            per_item = self._split(with_images, matrix)
        except EmbeddingError as e:
            # isolate the culprit(s): embed document by document
            log.warning("image batch failed (%s); retrying document by document", e)
            per_item = {}
            for item in with_images:
                try:
                    per_item[item.doc.id] = self._split([item], self.embedder.embed_images(item.images))[item.doc.id]
                except EmbeddingError as err:
                    reject(
                        item.position,
                        item.raw,
                        InvalidDocument(str(err), code="embedding_failed"),
                        "embed",
                        item.doc.id,
                    )
        kept = [item for item in items if not item.images or item.doc.id in per_item]
        return per_item, kept

    @staticmethod
    def _split(items: list[_Item], matrix: np.ndarray) -> dict[str, np.ndarray]:
        """One image vector per document: the normalised mean of its images' embeddings."""
        out = {}
        start = 0
        for item in items:
            count = len(item.images)
            out[item.doc.id] = l2_normalize(matrix[start : start + count].mean(axis=0, keepdims=True))[0]
            start += count
        return out
