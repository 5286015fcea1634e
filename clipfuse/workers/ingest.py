"""The ingest core: validate, load images, embed, encode BM25, upsert, report.

Pure Python (no Celery): the CLI runs it in-process, the Celery tasks call it
from workers. A document that cannot be processed is rejected alone, with a
reason; the rest of its batch lands. Engine outages (:class:`BackendUnavailable`)
are *not* rejections: they propagate so the caller retries the whole batch
(upserts are idempotent, so a retry is harmless).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
from PIL.Image import Image

from clipfuse.embedding import Embedder, PreparingEmbedder, l2_normalize
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
    images: list[Any] = field(default_factory=list)  # prepared images (the embedder's input)
    future: Future[_Loaded | _Failed] | None = None
    #: the document's own precomputed vectors, checked and normalised (``Document.vectors``)
    image_vector: np.ndarray | None = None
    text_vector: np.ndarray | None = None


@dataclass
class _Loaded:
    images: list[Any]
    read: float
    decode: float
    preprocess: float


@dataclass
class _Failed:
    error: InvalidDocument
    stage: Stage


@dataclass
class _Pending:
    """A batch whose images are being read, decoded and prepared in the pool."""

    started: float
    size: int
    items: list[_Item]
    rejected: list[Rejection]
    stages: dict[str, float]


#: thread-summed busy seconds of the loader's pool, kept in :attr:`Indexer.stage_totals`
POOL_STAGES = ("read", "decode", "preprocess")


class Indexer:
    """Runs documents through the pipeline into a backend.

    One instance per process: it holds the loaded model (via ``embedder``) and a pool of
    ``load_workers`` threads that read, decode and prepare images (Pillow releases the GIL
    while decoding and resizing). The model embeds one group of prepared images while the
    pool works on the next ones, and :meth:`index` starts loading the next batch before the
    current one is embedded and upserted, so decoding stays off the critical path (issue 5).
    With a :class:`PreparingEmbedder` (OpenCLIP), JPEGs are decoded at reduced size when
    they are at least twice the model's input and preprocessing ends in one batched
    operation on the device.

    A document's precomputed ``vectors`` take the place of the model: with ``vectors.image``
    its images are neither loaded nor embedded (they stay in the payload as references), with
    ``vectors.text`` its text is not embedded (BM25 still encodes it). A given vector whose
    length is not the model's dimension rejects that document alone (stage ``validate``, code
    ``vector_dimension``), before any of its images are fetched.
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
        reduced_jpeg_decode: bool = True,
    ) -> None:
        self.embedder = embedder
        self.backend = backend
        self.loader = loader or ImageLoader()
        self.bm25 = bm25 if bm25 is not None else (Bm25Encoder() if backend.lexical == "sparse" else None)
        self.batch_size = batch_size
        self.load_workers = load_workers
        self.reduced_jpeg_decode = reduced_jpeg_decode
        #: seconds per stage since construction: the pool's CPU time summed over its threads
        #: (read / decode / preprocess) and the calling thread's wall time per stage (the rest)
        self.stage_totals: dict[str, float] = {}
        self._schema_ready = False
        self._fields: dict[str, FieldType] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        self.backend.ensure_schema(dim=self.embedder.dim, model=self.embedder.model_id)
        info = self.backend.index_info()
        self._fields = dict(info.fields) if info else {}
        self._schema_ready = True

    def close(self) -> None:
        """Stop the loader's threads (they also end with the process)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    # -- public ----------------------------------------------------------------------
    def index(
        self,
        documents: Iterable[Document | dict[str, Any]],
        *,
        on_batch: Callable[[IngestReport, int], None] | None = None,
    ) -> IngestReport:
        """Index any number of documents in batches of ``batch_size``; one merged report.

        The images of batch ``n + 1`` load while batch ``n`` is embedded and upserted.
        """
        total = IngestReport()
        pending: _Pending | None = None
        offset = 0
        for chunk in batched(documents, self.batch_size):
            following = self._begin(chunk, offset=offset)  # positions count from the first document
            offset += len(chunk)
            if pending is not None:
                total = self._finish_and_report(pending, total, on_batch)
            pending = following
        if pending is not None:
            total = self._finish_and_report(pending, total, on_batch)
        return total

    def _finish_and_report(
        self, pending: _Pending, total: IngestReport, on_batch: Callable[[IngestReport, int], None] | None
    ) -> IngestReport:
        report = self._finish(pending)
        if on_batch is not None:
            on_batch(report, pending.size)
        return total.merge(report)

    def delete(self, ids: Sequence[str]) -> IngestReport:
        started = time.perf_counter()
        self.ensure_schema()
        self.backend.delete(list(ids))
        return IngestReport(deleted=len(ids), seconds=time.perf_counter() - started)

    def index_batch(self, raws: Sequence[Document | dict[str, Any]]) -> IngestReport:
        """Index one batch; bad documents are rejected alone, engine outages raise."""
        return self._finish(self._begin(raws))

    # -- the two halves of a batch -------------------------------------------------------
    @staticmethod
    def _reject(
        rejected: list[Rejection],
        position: int | None,
        raw: Any,
        error: InvalidDocument,
        stage: Stage,
        doc_id: str | None,
    ) -> None:
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

    def _begin(self, raws: Sequence[Document | dict[str, Any]], *, offset: int = 0) -> _Pending:
        """Validate, then hand every image to the pool (returns at once); positions start at ``offset``."""
        started = time.perf_counter()
        self.ensure_schema()
        t = time.perf_counter()
        rejected: list[Rejection] = []

        # 1. validate, keep the last version of a repeated id
        items: list[_Item] = []
        for position, raw in enumerate(raws, start=offset):
            try:
                items.append(_Item(position, raw, parse_document(raw)))
            except InvalidDocument as e:
                self._reject(rejected, position, raw, e, "validate", None)
        last_position = {item.doc.id: item.position for item in items}
        kept = []
        for item in items:
            if last_position[item.doc.id] != item.position:
                self._reject(
                    rejected,
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
                try:
                    self._take_vectors(item)
                except InvalidDocument as e:
                    self._reject(rejected, item.position, item.raw, e, "validate", item.doc.id)
                    continue
                kept.append(item)
        validate = time.perf_counter() - t

        # 2. start loading images: read, decode (reduced JPEG when allowed), prepare, in the pool
        #    (not for a document that brought its own image vector)
        prepare, _, draft = self._image_path()
        needing = [item for item in kept if item.doc.images and item.image_vector is None]
        if needing:
            pool = self._loader_pool()
            for item in needing:
                item.future = pool.submit(self._load_one, item.doc, prepare, draft)
        return _Pending(started, len(raws), kept, rejected, {"validate": validate})

    def _finish(self, pending: _Pending) -> IngestReport:
        """Wait for the images, embed, encode BM25, upsert, report."""
        stages = pending.stages
        rejected = pending.rejected

        def reject(position: int | None, raw: Any, error: InvalidDocument, stage: Stage, doc_id: str | None) -> None:
            self._reject(rejected, position, raw, error, stage, doc_id)

        # attribute types are checked here, not in _begin: the previous batch may have added fields
        t = time.perf_counter()
        items = self._check_attribute_types(pending.items, reject)
        kept_positions = {item.position for item in items}
        for item in pending.items:
            if item.position not in kept_positions and item.future is not None:
                item.future.cancel()
        stages["validate"] += time.perf_counter() - t

        # 2-3. collect loaded images in order and embed them in groups as they arrive
        stages["load"] = 0.0
        stages["embed_images"] = 0.0
        image_vectors, items = self._load_and_embed_images(items, reject, stages)
        image_vectors.update({item.doc.id: item.image_vector for item in items if item.image_vector is not None})

        t = time.perf_counter()
        with_text = [item for item in items if item.doc.text.strip()]
        to_embed = [item for item in with_text if item.text_vector is None]
        text_matrix = self.embedder.embed_texts([item.doc.text for item in to_embed]) if to_embed else None
        text_vectors = (
            {item.doc.id: text_matrix[i] for i, item in enumerate(to_embed)} if text_matrix is not None else {}
        )
        text_vectors.update({item.doc.id: item.text_vector for item in items if item.text_vector is not None})
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
        for name, seconds in stages.items():
            self.stage_totals[name] = self.stage_totals.get(name, 0.0) + seconds
        indexed = len(items) - sum(1 for item in items if item.doc.id in failures)
        rejected.sort(key=lambda r: (r.position is None, r.position))
        return IngestReport(
            indexed=indexed, rejected=rejected, stage_seconds=stages, seconds=time.perf_counter() - pending.started
        )

    # -- stages ------------------------------------------------------------------------
    def _take_vectors(self, item: _Item) -> None:
        """Check the document's precomputed vectors against the model and keep them L2-normalised.

        A wrong length is the document's fault, known before any work (stage ``validate``);
        only the worker can know it, since only it knows the index's model.
        """
        given = item.doc.vectors
        if given is None:
            return
        dim, model = self.embedder.dim, self.embedder.model_id
        for name, values in (("image", given.image), ("text", given.text)):
            if values is None:
                continue
            if len(values) != dim:
                raise InvalidDocument(
                    f"{name} vector has {len(values)} dimensions; the index's model {model} makes {dim}",
                    code="vector_dimension",
                )
            vector = _unit(values)
            if vector is None:  # the schema refuses these; a Document.model_construct does not
                raise InvalidDocument(f"{name} vector must be finite and not all zeros", code="vector_zero")
            if name == "image":
                item.image_vector = vector
            else:
                item.text_vector = vector

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

    def _image_path(self) -> tuple[Callable[[Image], Any], Callable[[Sequence[Any]], np.ndarray], int | None]:
        """(prepare one image, embed prepared images, reduced-decode side) for this embedder."""
        embedder = self.embedder
        if isinstance(embedder, PreparingEmbedder):
            draft = embedder.draft_size if self.reduced_jpeg_decode else None
            return embedder.prepare_image, embedder.embed_prepared, draft
        return _identity, embedder.embed_images, None  # embedders that take PIL images (tests, plugins)

    def _loader_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=max(1, self.load_workers), thread_name_prefix="clipfuse-load"
                )
            return self._pool

    def _load_one(self, doc: Document, prepare: Callable[[Image], Any], draft: int | None) -> _Loaded | _Failed:
        """Runs in the pool: every image of one document, or the reason it cannot be used."""
        images = []
        read = decode = preprocess = 0.0
        for number, source in enumerate(doc.images, start=1):
            which = f"image {number} of {len(doc.images)} ({source.describe()[:200]})"
            c0 = time.thread_time()
            try:
                data = self.loader.read_bytes(source)
                c1 = time.thread_time()
                image = self.loader.decode(data, draft_size=draft)
                c2 = time.thread_time()
            except InvalidDocument as e:
                return _Failed(InvalidDocument(f"{which}: {e.message}", code=e.code, doc_id=doc.id), "load")
            except Exception as e:  # a loader bug must cost this document, not the run
                log.exception("unexpected error loading %s", which)
                return _Failed(
                    InvalidDocument(f"{which}: could not be read: {type(e).__name__}: {e}", code="image_unreadable"),
                    "load",
                )
            try:
                images.append(prepare(image))
            except Exception as e:  # a broken image must not hide behind a generic crash
                return _Failed(
                    InvalidDocument(f"{which}: could not preprocess the image: {e}", code="embedding_failed"), "embed"
                )
            c3 = time.thread_time()
            # CPU time of this thread: waiting for the GIL, a core, a disk or a server does not count
            read += c1 - c0
            decode += c2 - c1
            preprocess += c3 - c2
        return _Loaded(images, read, decode, preprocess)

    def _load_and_embed_images(
        self, items: list[_Item], reject: Callable[..., None], stages: dict[str, float]
    ) -> tuple[dict[str, np.ndarray], list[_Item]]:
        """Wait for each document's images in order; embed a group as soon as it fills a model batch
        (while the pool goes on with the next documents)."""
        _, embed, _ = self._image_path()
        group_size = max(1, int(getattr(self.embedder, "batch_size", 64)))
        vectors: dict[str, np.ndarray] = {}
        failed: set[int] = set()
        group: list[_Item] = []
        pending_images = 0

        def flush() -> None:
            nonlocal group, pending_images
            if group:
                t = time.perf_counter()
                vectors.update(self._embed_group(group, embed, reject, failed))
                stages["embed_images"] += time.perf_counter() - t
            group, pending_images = [], 0

        for item in items:
            if item.future is None:
                continue
            t = time.perf_counter()
            result = item.future.result()
            stages["load"] += time.perf_counter() - t
            if isinstance(result, _Failed):
                reject(item.position, item.raw, result.error, result.stage, item.doc.id)
                failed.add(item.position)
                continue
            for name in POOL_STAGES:
                self.stage_totals[name] = self.stage_totals.get(name, 0.0) + getattr(result, name)
            item.images = result.images
            group.append(item)
            pending_images += len(item.images)
            if pending_images >= group_size:
                flush()
        flush()
        return vectors, [item for item in items if item.position not in failed]

    def _embed_group(
        self,
        group: list[_Item],
        embed: Callable[[Sequence[Any]], np.ndarray],
        reject: Callable[..., None],
        failed: set[int],
    ) -> dict[str, np.ndarray]:
        try:
            return self._split(group, embed([img for item in group for img in item.images]))
        except EmbeddingError as e:
            # isolate the culprit(s): embed document by document
            log.warning("image batch failed (%s); retrying document by document", e)
            per_item = {}
            for item in group:
                try:
                    per_item[item.doc.id] = self._split([item], embed(item.images))[item.doc.id]
                except EmbeddingError as err:
                    reject(
                        item.position,
                        item.raw,
                        InvalidDocument(str(err), code="embedding_failed"),
                        "embed",
                        item.doc.id,
                    )
                    failed.add(item.position)
            return per_item

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


def _identity(image: Image) -> Image:
    return image


def _unit(values: Sequence[float]) -> np.ndarray | None:
    """``values`` as a float32 unit vector (cosine engines), or None when it has no direction.

    Scaled by its largest component first, so neither tiny nor huge finite values under- or
    overflow on the way to float32.
    """
    vector = np.asarray(values, dtype=np.float64)
    peak = float(np.max(np.abs(vector)))
    if not (peak > 0 and np.isfinite(peak)):
        return None
    vector = vector / peak  # largest component 1: the norm is between 1 and sqrt(MAX_VECTOR_DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)
