"""The ingest pipeline: validate, load images, embed, encode BM25, write, report.

Pure Python (no Celery): ``clipfuse index`` runs it in-process (:mod:`clipfuse.ingest.run`),
the Celery tasks call it from workers, ``reindex``, bench and eval run it the same way.
A document that cannot be processed is rejected alone, with a reason; the rest of its
batch lands. Engine outages (:class:`BackendUnavailable`) are *not* rejections: they
propagate so the caller retries the whole batch (upserts are idempotent, so a retry is
harmless).

The stages, in order, each a method of :class:`Indexer` that reads and fills the batch's
:class:`_Item` s (a document's vectors travel on its item) and is timed into the report's
``stage_seconds``:

1. validate (:meth:`Indexer._validate`, :func:`last_versions`, :meth:`Indexer._take_vectors`,
   :meth:`Indexer._check_attribute_types`);
2. load images, in a pool of threads (:meth:`Indexer._load_one`);
3. embed images as loaded groups fill a model batch (:meth:`Indexer._load_and_embed_images`),
   then texts (:meth:`Indexer._embed_texts`);
4. encode BM25 (:meth:`Indexer._encode_bm25`);
5. write (:meth:`Indexer._write`) and report.

Sources (the JSONL catalog or image folder, :class:`clipfuse.sources.CatalogReader`; a
queue's messages) are any iterable of raw documents.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL.Image import Image

from clipfuse.embedding import Embedder, PreparingEmbedder, l2_normalize
from clipfuse.errors import ConfigurationError, EmbeddingError, InvalidDocument
from clipfuse.images import ImageLoader
from clipfuse.plugin.bm25 import Bm25Encoder, SparseVector
from clipfuse.plugin.filters import field_type_of
from clipfuse.plugin.protocol import Backend, IndexedDocument
from clipfuse.schemas import Document, FieldType, IngestReport, Rejection, Stage, parse_document

if TYPE_CHECKING:
    from clipfuse.embedding.gpu_decode import DeviceJpegEmbedder

__all__ = ["Indexer", "batched", "document_key", "document_payload", "last_versions"]

log = logging.getLogger(__name__)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def document_key(raw: Any) -> str | None:
    """The id a raw document has once validated, read without validating it (``None``: no usable id).

    Equal to ``parse_document(raw).id`` for every valid document (an integer id becomes its string).
    """
    if isinstance(raw, Document):
        return raw.id
    if not isinstance(raw, Mapping):
        return None
    value = raw.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value)
    return None


def last_versions(keys: Sequence[str | None]) -> list[int]:
    """The one duplicates rule: a repeated id keeps its last version.

    For each position, the position of the version that is kept: the last one with the same
    key, or itself (a ``None`` key, no id, is never a duplicate). Position ``i`` is kept when
    ``last_versions(keys)[i] == i``. The :class:`Indexer` applies it to a batch (an earlier copy
    is rejected as ``duplicate_id``), the workers to a batch of messages (an earlier copy, often
    the same message delivered twice, is counted as superseded).
    """
    last: dict[str, int] = {}
    for position, key in enumerate(keys):
        if key is not None:
            last[key] = position
    return [position if key is None else last[key] for position, key in enumerate(keys)]


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
    #: the document's vectors: its own precomputed ones (``Document.vectors``, checked and
    #: normalised in validation), else the model's, filled in by the embed stages
    image_vector: np.ndarray | None = None
    text_vector: np.ndarray | None = None
    #: filled in by the BM25 stage (engines that take sparse vectors)
    sparse: SparseVector | None = None


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


#: how a stage rejects one of the batch's documents: (its item, why, the stage)
_RejectFn = Callable[[_Item, InvalidDocument, Stage], None]


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

    ``device_decode`` (default: on when an OpenCLIP model runs on CUDA): the loader's threads
    only read the JPEGs the device decoder takes (sequential JPEGs within the limits,
    :meth:`DeviceJpegEmbedder.takes <clipfuse.embedding.gpu_decode.DeviceJpegEmbedder.takes>`)
    and each model batch decodes them on the device (nvjpeg) and preprocesses them there in
    one batched resize / crop / normalise; everything else (PNG, WebP, progressive or CMYK
    JPEGs, over-limit images) is decoded the CPU way by the threads as before and joins the
    same batch, as does a JPEG the device fails to decode. An image neither way can read
    rejects its document alone (stage ``load``). ``True`` on the CPU runs the same code with
    libjpeg (what the tests use).

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
        device_decode: bool | None = None,
    ) -> None:
        self.embedder = embedder
        self.backend = backend
        self.loader = loader or ImageLoader()
        self.bm25 = bm25 if bm25 is not None else (Bm25Encoder() if backend.lexical == "sparse" else None)
        self.batch_size = batch_size
        self.load_workers = load_workers
        self.reduced_jpeg_decode = reduced_jpeg_decode
        #: None: on when an OpenCLIP model runs on CUDA (see the class doc)
        self.device_decode = device_decode
        self._device: DeviceJpegEmbedder | None = None
        self._device_resolved = False
        #: with device decoding: images embedded after a device decode / after the CPU way
        self.decoded = {"device": 0, "cpu": 0}
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
        rejected: list[Rejection] = []
        stages: dict[str, float] = {}
        with _timed(stages, "validate"):
            items = self._validate(raws, offset, rejected)
        # start loading images: read, decode (reduced JPEG when allowed), prepare, in the pool
        # (not for a document that brought its own image vector)
        prepare, _, draft = self._image_path()
        device = self._device_decoder()
        needing = [item for item in items if item.doc.images and item.image_vector is None]
        if needing:
            pool = self._loader_pool()
            for item in needing:
                item.future = pool.submit(self._load_one, item.doc, prepare, draft, device)
        return _Pending(started, len(raws), items, rejected, stages)

    def _finish(self, pending: _Pending) -> IngestReport:
        """Wait for the images, embed, encode BM25, write, report."""
        stages = pending.stages
        rejected = pending.rejected

        def reject(item: _Item, error: InvalidDocument, stage: Stage) -> None:
            self._reject(rejected, item.position, item.raw, error, stage, item.doc.id)

        # attribute types are checked here, not in _begin: the previous batch may have added fields
        with _timed(stages, "validate"):
            items = self._check_attribute_types(pending.items, reject)
            kept_positions = {item.position for item in items}
            for item in pending.items:
                if item.position not in kept_positions and item.future is not None:
                    item.future.cancel()
        # collect loaded images in order and embed them in groups as they arrive (times load, embed_images)
        items = self._load_and_embed_images(items, reject, stages)
        with _timed(stages, "embed_texts"):
            self._embed_texts(items)
        with _timed(stages, "bm25"):
            self._encode_bm25(items)
        with _timed(stages, "upsert"):
            items = self._write(items, reject)
        for name, seconds in stages.items():
            self.stage_totals[name] = self.stage_totals.get(name, 0.0) + seconds
        rejected.sort(key=lambda r: (r.position is None, r.position))
        return IngestReport(
            indexed=len(items), rejected=rejected, stage_seconds=stages, seconds=time.perf_counter() - pending.started
        )

    # -- stages ------------------------------------------------------------------------
    def _validate(self, raws: Sequence[Any], offset: int, rejected: list[Rejection]) -> list[_Item]:
        """Parse each document; of a repeated id keep the last version (:func:`last_versions`);
        check precomputed vectors. What fails is rejected (stage ``validate``)."""
        items: list[_Item] = []
        for position, raw in enumerate(raws, start=offset):
            try:
                items.append(_Item(position, raw, parse_document(raw)))
            except InvalidDocument as e:
                self._reject(rejected, position, raw, e, "validate", None)
        winners = last_versions([item.doc.id for item in items])
        kept = []
        for item, winner in zip(items, winners, strict=True):
            try:
                if items[winner] is not item:
                    raise InvalidDocument(
                        f"id {item.doc.id!r} appears again later in the same batch (position "
                        f"{items[winner].position}); this earlier copy was skipped, the later one indexed",
                        code="duplicate_id",
                    )
                self._take_vectors(item)
            except InvalidDocument as e:
                self._reject(rejected, item.position, item.raw, e, "validate", item.doc.id)
                continue
            kept.append(item)
        return kept

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

    def _check_attribute_types(self, items: list[_Item], reject: _RejectFn) -> list[_Item]:
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
                reject(item, InvalidDocument(problem, code="attribute_type"), "validate")
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

    def _device_decoder(self) -> DeviceJpegEmbedder | None:
        """The device decoder when device decoding is on for this embedder (see the class doc)."""
        if self._device_resolved:
            return self._device
        choice = self.device_decode
        # OpenCLIP embedders only: an embedder of another kind never imported the module (nor torch)
        openclip = sys.modules.get("clipfuse.embedding.openclip")
        is_openclip = openclip is not None and isinstance(self.embedder, openclip.OpenClipEmbedder)
        if choice is True and not is_openclip:
            raise ConfigurationError(
                f"device JPEG decoding needs an OpenCLIP embedder, not {type(self.embedder).__name__}: "
                "set CLIPFUSE_IMAGES__DEVICE_DECODE=false"
            )
        if choice is None and not (is_openclip and self.embedder.device.type == "cuda"):  # type: ignore[attr-defined]
            choice = False
        if choice is not False:
            from clipfuse.embedding.gpu_decode import DeviceJpegEmbedder

            try:
                self._device = DeviceJpegEmbedder(self.embedder, loader=self.loader)  # type: ignore[arg-type]
            except ConfigurationError:
                if choice is True:
                    raise
                log.info("device decoding is off: %s's preprocessing is not resize + crop", self.embedder.model_id)
        self._device_resolved = True
        return self._device

    def _loader_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=max(1, self.load_workers), thread_name_prefix="clipfuse-load"
                )
            return self._pool

    def _load_one(
        self,
        doc: Document,
        prepare: Callable[[Image], Any],
        draft: int | None,
        device: DeviceJpegEmbedder | None = None,
    ) -> _Loaded | _Failed:
        """Runs in the pool: every image of one document, or the reason it cannot be used.

        With ``device``, the JPEGs it takes stay bytes (decoded with their batch on the device)."""
        images = []
        read = decode = preprocess = 0.0
        for number, source in enumerate(doc.images, start=1):
            which = f"image {number} of {len(doc.images)} ({source.describe()[:200]})"
            c0 = time.thread_time()
            try:
                data = self.loader.read_bytes(source)
                c1 = time.thread_time()
                if device is not None and device.takes(data):
                    images.append(data)
                    read += c1 - c0
                    continue
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

    def _load_and_embed_images(self, items: list[_Item], reject: _RejectFn, stages: dict[str, float]) -> list[_Item]:
        """Wait for each document's images in order; embed a group as soon as it fills a model batch
        (while the pool goes on with the next documents). Sets ``image_vector``; returns the items
        still standing."""
        _, embed, draft = self._image_path()
        device = self._device_decoder()
        if device is not None:
            embed = functools.partial(self._embed_on_device, device, draft)
        group_size = max(1, int(getattr(self.embedder, "batch_size", 64)))
        failed: set[int] = set()
        group: list[_Item] = []
        pending_images = 0
        stages["load"] = 0.0
        stages["embed_images"] = 0.0

        def flush() -> None:
            nonlocal group, pending_images
            if group:
                with _timed(stages, "embed_images"):
                    self._embed_group(group, embed, reject, failed)
            group, pending_images = [], 0

        for item in items:
            if item.future is None:
                continue
            with _timed(stages, "load"):
                result = item.future.result()
            if isinstance(result, _Failed):
                reject(item, result.error, result.stage)
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
        return [item for item in items if item.position not in failed]

    def _embed_on_device(self, device: DeviceJpegEmbedder, draft: int | None, images: Sequence[Any]) -> np.ndarray:
        """Embed a group's images (JPEG bytes and CPU-prepared pixels) with the device decoder; an
        image neither way could read raises :class:`_Unreadable` naming it (by its index)."""
        batch = device.embed(images, draft_size=draft)
        self.decoded["device"] += batch.on_device
        self.decoded["cpu"] += batch.on_cpu
        vectors = np.zeros((len(images), batch.vectors.shape[1]), dtype=batch.vectors.dtype)
        vectors[batch.rows] = batch.vectors
        if batch.failed:
            raise _Unreadable(batch.failed, vectors)
        return vectors

    def _embed_group(
        self,
        group: list[_Item],
        embed: Callable[[Sequence[Any]], np.ndarray],
        reject: _RejectFn,
        failed: set[int],
    ) -> None:
        try:
            self._split(group, embed([img for item in group for img in item.images]))
        except _Unreadable as e:
            # reject the documents with an image neither decoder could read; the others' vectors stand
            start = 0
            kept: list[_Item] = []
            rows: list[int] = []
            for item in group:
                count = len(item.images)
                if not self._reject_unreadable(item, e.failed, group, reject, failed):
                    kept.append(item)
                    rows.extend(range(start, start + count))
                start += count
            self._split(kept, e.vectors[rows])
        except EmbeddingError as e:
            # isolate the culprit(s): embed document by document
            log.warning("image batch failed (%s); retrying document by document", e)
            for item in group:
                try:
                    self._split([item], embed(item.images))
                except _Unreadable as unreadable:
                    self._reject_unreadable(item, unreadable.failed, [item], reject, failed)
                except EmbeddingError as err:
                    reject(item, InvalidDocument(str(err), code="embedding_failed"), "embed")
                    failed.add(item.position)

    @staticmethod
    def _reject_unreadable(
        item: _Item, unreadable: Mapping[int, str], group: list[_Item], reject: _RejectFn, failed: set[int]
    ) -> bool:
        """Reject ``item`` if one of its images is in ``unreadable`` (indices into the group's images)."""
        start = 0
        for other in group:
            if other is item:
                break
            start += len(other.images)
        for number in range(1, len(item.images) + 1):
            reason = unreadable.get(start + number - 1)
            if reason is not None:
                source = item.doc.images[number - 1].describe()[:200]
                message = f"image {number} of {len(item.images)} ({source}): {reason}"
                reject(item, InvalidDocument(message, code="image_unreadable"), "load")
                failed.add(item.position)
                return True
        return False

    @staticmethod
    def _split(items: list[_Item], matrix: np.ndarray) -> None:
        """One image vector per document: the normalised mean of its images' embeddings."""
        start = 0
        for item in items:
            count = len(item.images)
            item.image_vector = l2_normalize(matrix[start : start + count].mean(axis=0, keepdims=True))[0]
            start += count

    def _embed_texts(self, items: list[_Item]) -> None:
        """Sets ``text_vector`` of each document with text and no precomputed text vector."""
        to_embed = [item for item in items if item.doc.text.strip() and item.text_vector is None]
        if not to_embed:
            return
        matrix = self.embedder.embed_texts([item.doc.text for item in to_embed])
        for i, item in enumerate(to_embed):
            item.text_vector = matrix[i]

    def _encode_bm25(self, items: list[_Item]) -> None:
        """Sets ``sparse`` of each document with text, for engines that take sparse vectors."""
        with_text = [item for item in items if item.doc.text.strip()]
        if self.bm25 is None or not with_text:
            return
        for item, vector in zip(with_text, self.bm25.encode_documents([i.doc.text for i in with_text]), strict=True):
            item.sparse = vector

    def _write(self, items: list[_Item], reject: _RejectFn) -> list[_Item]:
        """Register new attribute fields, upsert; returns the items the engine took."""
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
                image_vector=item.image_vector,
                text_vector=item.text_vector,
                sparse=item.sparse,
                text=item.doc.text or None,
            )
            for item in items
        ]
        failures = self.backend.upsert(prepared) if prepared else {}
        written = []
        for item in items:
            if item.doc.id in failures:
                message = f"the search engine refused the document: {failures[item.doc.id]}"
                reject(item, InvalidDocument(message, code="engine_refused"), "upsert")
            else:
                written.append(item)
        return written


class _Unreadable(Exception):
    """Images of a group neither the device nor the CPU way could decode: index -> reason, and the
    vectors of the others."""

    def __init__(self, failed: dict[int, str], vectors: np.ndarray) -> None:
        super().__init__(f"{len(failed)} unreadable image(s)")
        self.failed = failed
        #: the group's image vectors, row = image index (zeros for the failed ones)
        self.vectors = vectors


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``stages[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - started


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
