"""The hybrid query adapter, used through the client the shop already has."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from clipfuse.embedding import PreparingEmbedder
from clipfuse.errors import ConfigurationError, InvalidDocument, InvalidQuery
from clipfuse.plugin import fusion
from clipfuse.plugin.bm25 import Bm25Encoder
from clipfuse.plugin.filters import resolve_filters
from clipfuse.plugin.protocol import Backend, HybridQuery, IndexInfo, Retriever
from clipfuse.schemas import Hit, SearchRequest, SearchResponse, SignalScores

if TYPE_CHECKING:
    from clipfuse.embedding import Embedder
    from clipfuse.images import ImageLoader

__all__ = ["HybridSearcher", "backend_for"]

_NORMALISATION = {"rrf": "rrf", "linear": "linear", "dbsf": "dbsf", "zscore": "zscore"}


def backend_for(client: Any, name: str | None) -> Backend:
    """Wrap a user's engine client (``QdrantClient``, ``Elasticsearch``) in its backend; pass a Backend through."""
    if isinstance(client, Backend):
        return client
    module = type(client).__module__
    if module.startswith("qdrant_client"):
        if not name:
            raise ConfigurationError("HybridSearcher(QdrantClient(...)) needs collection=...")
        from clipfuse.plugin.qdrant import QdrantBackend

        return QdrantBackend(client, name)
    if module.startswith("elasticsearch"):
        if not name:
            raise ConfigurationError("HybridSearcher(Elasticsearch(...)) needs index=...")
        from clipfuse.plugin.elasticsearch import ElasticsearchBackend

        return ElasticsearchBackend(client, name)
    if type(client).__name__ == "EdgeShard":  # qdrant_edge's class reports the module "builtins"
        raise ConfigurationError(
            "pass clipfuse.plugin.edge.EdgeBackend(path, collection) rather than a qdrant_edge.EdgeShard: "
            "the backend opens the shard itself (its lock, its metadata, its index building)"
        )
    raise ConfigurationError(
        f"unsupported client {type(client).__module__}.{type(client).__name__}: pass a QdrantClient, "
        "an Elasticsearch client, or an object implementing clipfuse.plugin.Backend"
    )


class HybridSearcher:
    """Multimodal hybrid search over an index that clipfuse filled.

    >>> searcher = HybridSearcher(QdrantClient(path="clipfuse-data/qdrant"), collection="products",
    ...                           embedder=OpenClipEmbedder("clipfuse-demo"))
    >>> searcher.search(text="red leather ankle boots", filters=[...], k=10)

    ``embedder`` may be left out by a service that sends precomputed query
    vectors (``dense=``); the module then never imports torch.
    """

    def __init__(
        self,
        client: Any,
        *,
        collection: str | None = None,
        index: str | None = None,
        embedder: Embedder | None = None,
        bm25: Bm25Encoder | None = None,
        image_loader: ImageLoader | None = None,
    ) -> None:
        self.backend = backend_for(client, collection or index)
        self.embedder = embedder
        self._bm25 = bm25
        self._image_loader = image_loader
        self._info: IndexInfo | None = None

    @property
    def bm25(self) -> Bm25Encoder:
        if self._bm25 is None:
            self._bm25 = Bm25Encoder()
        return self._bm25

    @property
    def image_loader(self) -> ImageLoader:
        if self._image_loader is None:
            from clipfuse.images import ImageLoader

            self._image_loader = ImageLoader()
        return self._image_loader

    def index_info(self, *, refresh: bool = False) -> IndexInfo:
        if self._info is None or refresh:
            info = self.backend.index_info()
            if info is None:
                raise InvalidQuery("the index does not exist yet: index some documents first (clipfuse index PATH)")
            self._info = info
        return self._info

    # -- query encoding --------------------------------------------------------------
    def _embedder(self) -> Embedder:
        if self.embedder is None:
            raise ConfigurationError("this searcher has no embedder: pass embedder=... or precomputed dense=...")
        return self.embedder

    def encode_query(self, request: SearchRequest) -> np.ndarray:
        """The dense query vector: text, image, or their normalised mix (composed query)."""
        embedder = self._embedder()
        text_vec = embedder.embed_texts([request.text])[0] if request.text is not None else None
        image_vec = None
        if request.image is not None:
            # decoded as the indexer decodes (reduced-size JPEG decoding), so an indexed photo finds itself
            draft = embedder.draft_size if isinstance(embedder, PreparingEmbedder) else None
            try:
                image = self.image_loader.load(request.image, draft_size=draft)
            except InvalidDocument as e:
                raise InvalidQuery(f"query image: {e.message}") from None
            image_vec = embedder.embed_images([image])[0]
        if text_vec is not None and image_vec is not None:
            mixed = request.compose_alpha * image_vec + (1.0 - request.compose_alpha) * text_vec
            norm = float(np.linalg.norm(mixed))
            return (mixed / norm).astype(np.float32) if norm > 0 else image_vec
        vec = image_vec if image_vec is not None else text_vec
        assert vec is not None
        return vec

    def build_query(self, request: SearchRequest, dense: np.ndarray | None = None) -> HybridQuery:
        info = self.index_info()
        if dense is None and (request.weights.image > 0 or request.weights.text > 0):
            dense = self.encode_query(request)
        if dense is not None:
            dense = np.asarray(dense, dtype=np.float32).reshape(-1)
            if dense.shape != (info.dim,):
                raise InvalidQuery(f"query vector has {dense.shape[0]} dimensions; the index holds {info.dim}")
        retrievers: list[Retriever] = []
        w = request.weights
        if w.image > 0 and dense is not None:
            retrievers.append(Retriever("image", w.image, dense=dense))
        if w.text > 0 and dense is not None:
            retrievers.append(Retriever("text", w.text, dense=dense))
        if w.bm25 > 0 and request.text is not None:
            sparse = self.bm25.encode_query(request.text) if self.backend.lexical == "sparse" else None
            if sparse is None or len(sparse):
                retrievers.append(Retriever("bm25", w.bm25, sparse=sparse, text=request.text))
        if not retrievers:
            raise InvalidQuery("no signal can run for this request: check the weights and give a text or an image")
        return HybridQuery(
            retrievers=tuple(retrievers),
            filters=resolve_filters(request.filters, info.fields),
            fusion=request.fusion,
            rrf_k=request.rrf_k,
            limit=request.offset + request.k,
            candidates=request.candidate_limit,
        )

    # -- search ----------------------------------------------------------------------
    def search(
        self, request: SearchRequest | None = None, /, *, dense: np.ndarray | None = None, **fields: Any
    ) -> SearchResponse:
        """Run a hybrid search. Pass a :class:`SearchRequest`, or its fields as keywords."""
        started = time.perf_counter()
        if request is None:
            try:
                request = SearchRequest.model_validate(fields)
            except ValueError as e:
                raise InvalidQuery(str(e)) from None
        elif fields:
            raise InvalidQuery("pass either a SearchRequest or keyword fields, not both")
        query = self.build_query(request, dense)
        result = self.backend.search(query)
        weights = [r.weight for r in query.retrievers]
        if result.fused is not None:
            ranking = [(r.id, r.score) for r in result.fused[: query.limit]]
            fused_by = "engine"
        else:
            merged = fusion.fuse(
                _NORMALISATION[request.fusion],  # type: ignore[arg-type]
                result.lists,
                k=request.rrf_k,
                weights=weights,
                limit=query.limit,
            )
            ranking = [(f.id, f.score) for f in merged]
            fused_by = "client"
        per_signal: dict[str, dict[str, tuple[float, int]]] = {}
        for retriever, ranked in zip(query.retrievers, result.lists, strict=True):
            table: dict[str, tuple[float, int]] = {}
            for position, item in enumerate(ranked, start=1):
                table.setdefault(item.id, (item.score, position))
            per_signal[retriever.signal] = table
        hits = []
        for position, (doc_id, score) in enumerate(ranking[request.offset :], start=request.offset + 1):
            scores: dict[str, float | None] = {}
            ranks: dict[str, float | None] = {}
            for signal, table in per_signal.items():
                entry = table.get(doc_id)
                scores[signal] = entry[0] if entry else None
                ranks[signal] = float(entry[1]) if entry else None
            hits.append(
                Hit(
                    id=doc_id,
                    rank=position,
                    score=float(score),
                    signals=SignalScores(**scores),
                    ranks=SignalScores(**ranks),
                    payload=result.payloads.get(doc_id, {}),
                )
            )
        return SearchResponse(
            hits=hits,
            fusion=request.fusion,
            fused_by=fused_by,  # type: ignore[arg-type]
            took_ms=(time.perf_counter() - started) * 1000.0,
        )
