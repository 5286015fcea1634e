"""The hybrid query adapter, used through the client the shop already has."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from clipfuse.embedding import PreparingEmbedder
from clipfuse.errors import ConfigurationError, InvalidDocument, InvalidQuery
from clipfuse.plugin import collapse as collapse_steps
from clipfuse.plugin import facets as facet_steps
from clipfuse.plugin import fusion
from clipfuse.plugin import ranking as ranking_steps
from clipfuse.plugin import rules as _rules
from clipfuse.plugin.bm25 import Bm25Encoder
from clipfuse.plugin.cursor import CursorCodec, FrozenRanking, MemoryCursorStore
from clipfuse.plugin.filters import resolve_filter_tree, resolve_filters
from clipfuse.plugin.fusion import Ranked
from clipfuse.plugin.protocol import Backend, Facetable, FacetQuery, Fetchable, HybridQuery, IndexInfo, Retriever
from clipfuse.plugin.ranking import AnyBoost, Candidate
from clipfuse.schemas import FieldType, FilterCondition, SearchRequest, SearchResponse
from clipfuse.schemas.rules import Rule, RuleSet, load_rules
from clipfuse.schemas.search import (
    DecayBoost,
    FacetStats,
    FilterBoost,
    Total,
    Variant,
    parse_boost,
)

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
        rules: RuleSet | str | os.PathLike[str] | None = None,
        cursors: CursorCodec | Literal["memory"] | None = "memory",
    ) -> None:
        self.backend = backend_for(client, collection or index)
        self.embedder = embedder
        self._bm25 = bm25
        self._image_loader = image_loader
        self._info: IndexInfo | None = None
        #: the merchandising rules in use (checked against the index; see :meth:`load_rules`)
        self.rules: RuleSet = RuleSet()
        #: where rankings are frozen for ``next_cursor`` (default: in this process, 10 minutes); None: no cursors
        self.cursors: CursorCodec | None = CursorCodec(MemoryCursorStore()) if cursors == "memory" else cursors
        if rules is not None:
            self.load_rules(rules)

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
            return np.asarray(mixed / norm if norm > 0 else image_vec, dtype=np.float32)
        vec = image_vec if image_vec is not None else text_vec
        assert vec is not None
        return np.asarray(vec, dtype=np.float32)

    def build_query(self, request: SearchRequest, dense: np.ndarray | None = None) -> HybridQuery:
        """The engine query :meth:`search` sends for ``request``: every signal's candidates, the whole window."""
        return self._prepare(request, dense)[0]

    def _prepare(self, request: SearchRequest, dense: np.ndarray | None) -> tuple[HybridQuery, _Plan, list[Rule]]:
        info = self.index_info()
        plan = self._check_window(request, info)
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
        filters = resolve_filters(request.filters, info.fields)
        matched = _rules.matching_rules(self.rules, request.text, filters) if request.rules and self.rules.rules else []
        for boost, _label, _rule in _rules.rule_boosts(matched):
            plan.window_fields.update(c.field for c in boost.filters)
        query = HybridQuery(
            retrievers=tuple(retrievers),
            filters=filters,
            fusion=request.fusion,
            rrf_k=request.rrf_k,
            # the whole fused window: boosts, rules, collapse and facets rank and count all of it
            limit=len(retrievers) * request.candidate_limit,
            candidates=request.candidate_limit,
            window_fields=tuple(sorted(plan.window_fields)),
            where=resolve_filter_tree(request.where, info.fields),
        )
        return query, plan, matched

    # -- the shop's own Elasticsearch body ------------------------------------------------
    def hybridize(
        self,
        body: Mapping[str, Any],
        *,
        text: str | None = None,
        image: Any = None,
        weights: Any = None,
        fusion: str = "rrf",
        rrf_k: float = 60.0,
        compose_alpha: float | None = None,
        candidates: int = 100,
        knn_filter: Sequence[Mapping[str, Any]] | None = None,
        dense: np.ndarray | None = None,
        boosts: Sequence[Any] = (),
        collapse: str | None = None,
    ) -> dict[str, Any]:
        """Hybridise a shop's own Elasticsearch ``_search`` body (see
        :func:`clipfuse.plugin.elasticsearch.hybrid_shop_search`): its query is the lexical
        signal, the query ``text`` / ``image`` embedded here drive the kNN signals, filtered
        by the body's filter clauses; ``boosts`` and ``collapse`` (or the body's own
        ``collapse.field``) as in :meth:`search`; the answer is in Elasticsearch's shape.

        >>> searcher.hybridize(shop_body, text="red leather boots")
        """
        from clipfuse.plugin.elasticsearch import ElasticsearchBackend, hybrid_shop_search

        if not isinstance(self.backend, ElasticsearchBackend):
            raise ConfigurationError(
                f"hybridize() wraps an Elasticsearch _search body; this searcher's backend is {self.backend.name}"
            )
        if text is None and image is None and dense is None:
            raise InvalidQuery(
                "hybridize() needs the query text (or an image) to embed for the kNN signals: pass text=... "
                "(the shop's query alone is a plain Elasticsearch search)"
            )
        fields: dict[str, Any] = {"text": text if text is not None else "*", "image": image, "fusion": fusion}
        if weights is not None:
            fields["weights"] = weights
        if compose_alpha is not None:
            fields["compose_alpha"] = compose_alpha
        if boosts:  # Boost objects, or the CLI's strings ('in_stock=true:+0.1', 'log1p(popularity)*0.1')
            fields["boosts"] = [parse_boost(b) if isinstance(b, str) else b for b in boosts]
        if collapse is not None:
            fields["collapse"] = collapse
        try:
            request = SearchRequest.model_validate(fields)
        except ValueError as e:
            raise InvalidQuery(str(e)) from None
        checked: list[tuple[AnyBoost, str]] = []
        if request.boosts or request.collapse is not None:
            checked = self._check_window(request, self.index_info()).boosts  # fields exist, boosts typed
        w = request.weights
        vectors: dict[str, np.ndarray] = {}
        if w.image > 0 or w.text > 0:
            vector = dense if dense is not None else self.encode_query(request.model_copy(update={"text": text}))
            vectors = {signal: vector for signal, weight in (("image", w.image), ("text", w.text)) if weight > 0}
        return hybrid_shop_search(
            self.backend.client,
            self.backend.index,
            body,
            vectors=vectors,
            weights={"bm25": w.bm25, "image": w.image, "text": w.text},
            fusion_method=request.fusion,
            rrf_k=rrf_k,
            candidates=candidates,
            knn_filter=knn_filter,
            boosts=checked,
            collapse=request.collapse.field if request.collapse is not None else None,
        )

    # -- rules ----------------------------------------------------------------------
    def load_rules(self, rules: RuleSet | str | os.PathLike[str]) -> RuleSet:
        """Check a rule set (or a rules file) against the index and use it from the next search on.

        Every filter field must exist in the index, and every pinned / hidden id must be
        a document of it (where the backend can read documents by id). On any problem
        the previous rules stay and :class:`~clipfuse.errors.ConfigurationError` says which
        rule and what to change.
        """
        ruleset = rules if isinstance(rules, RuleSet) else load_rules(os.fspath(rules))
        resolved = self._resolve_rules(ruleset)
        self.rules = resolved
        return resolved

    def _resolve_rules(self, ruleset: RuleSet) -> RuleSet:
        info = self.index_info()

        def resolve(conditions: list[FilterCondition], rule_id: str, where: str) -> list[FilterCondition]:
            try:
                return list(resolve_filters(conditions, info.fields))
            except InvalidQuery as e:
                raise ConfigurationError(f"rule {rule_id!r} ({where}): {e.message}") from None

        out = []
        for rule in ruleset.rules:
            conditions = [
                c.model_copy(update={"filters": resolve(c.filters, rule.id, "conditions")}) for c in rule.conditions
            ]
            boosts = [
                b.model_copy(update={"filters": resolve(b.filters, rule.id, "consequence.boost")})
                for b in rule.consequence.boost
            ]
            consequence = rule.consequence.model_copy(update={"boost": boosts})
            out.append(rule.model_copy(update={"conditions": conditions, "consequence": consequence}))
        resolved = RuleSet(rules=out)
        ids = sorted(resolved.ids())
        if ids and isinstance(self.backend, Fetchable):
            found = set(self.backend.fetch(ids, ()))
            for rule in resolved.rules:
                unknown = [
                    doc for doc in [*(p.id for p in rule.consequence.pin), *rule.consequence.hide] if doc not in found
                ]
                if unknown:
                    raise ConfigurationError(
                        f"rule {rule.id!r} names documents the index does not hold: {unknown[:10]}; fix the ids "
                        "(a hit's 'id') or index those documents first"
                    )
        return resolved

    # -- checks -------------------------------------------------------------------------
    def _check_window(self, request: SearchRequest, info: IndexInfo) -> _Plan:
        fields = info.fields
        known = ", ".join(sorted(fields)) or "none yet (index documents with attributes first)"
        for name in request.facets:
            if name not in fields:
                raise InvalidQuery(f"unknown facet field {name!r}; fields you can facet on: {known}")
        if request.facet_scope == "matches" and request.facets and not isinstance(self.backend, Facetable):
            raise InvalidQuery(
                f"facet_scope 'matches' needs a backend that counts facets itself; the {self.backend.name} backend "
                "does not: use facet_scope 'window' (the fused candidates, what the shopper can page through)"
            )
        collapse = request.collapse
        if collapse is not None:
            kind = fields.get(collapse.field)
            if kind is None:
                raise InvalidQuery(
                    f"unknown collapse field {collapse.field!r}; keyword fields: {_of(fields, 'keyword')}"
                )
            if kind != "keyword":
                raise InvalidQuery(
                    f"collapse needs a keyword field (a group id); {collapse.field!r} is {kind}: choose one of "
                    f"{_of(fields, 'keyword')}"
                )
            for name in collapse.fields:
                if name not in fields and name not in _TEXT_FIELDS:
                    raise InvalidQuery(
                        f"collapse.fields: unknown field {name!r}; variants can carry {known}, "
                        f"{', '.join(_TEXT_FIELDS)}"
                    )
        boosts: list[tuple[AnyBoost, str]] = []
        for position, boost in enumerate(request.boosts):
            where = f"boosts.{position}"
            if isinstance(boost, FilterBoost):
                try:
                    checked = resolve_filters(boost.filters, fields)
                except InvalidQuery as e:
                    raise InvalidQuery(f"{where}: {e.message}") from None
                boost = boost.model_copy(update={"filters": list(checked)})
            else:
                kind = fields.get(boost.field)
                if kind is None:
                    raise InvalidQuery(
                        f"{where}: unknown boost field {boost.field!r}; number fields: {_of(fields, 'number')}"
                    )
                dates = isinstance(boost, DecayBoost) and boost.on_dates
                if dates and kind not in ("keyword", "number"):
                    raise InvalidQuery(
                        f"{where}: a date decay reads ISO dates (a keyword field) or epoch seconds (a number field); "
                        f"{boost.field!r} is {kind}"
                    )
                if not dates and kind != "number":
                    what = "a decay with a number origin" if isinstance(boost, DecayBoost) else f"{boost.function}"
                    raise InvalidQuery(
                        f"{where}: {what} needs a number field; {boost.field!r} is {kind}: boost a keyword or bool "
                        f"field with a filter boost instead (e.g. '{boost.field}=VALUE:+0.1'), or use one of "
                        f"{_of(fields, 'number')}"
                    )
            boosts.append((boost, boost.label))
        window_fields = set(request.facets)
        if collapse is not None:
            window_fields.add(collapse.field)
            window_fields.update(collapse.fields)
        for boost, _label in boosts:
            if isinstance(boost, FilterBoost):
                window_fields.update(c.field for c in boost.filters)
            else:
                window_fields.add(boost.field)
        return _Plan(boosts=boosts, window_fields=window_fields)

    # -- search ----------------------------------------------------------------------
    def search(
        self, request: SearchRequest | None = None, /, *, dense: np.ndarray | None = None, **fields: Any
    ) -> SearchResponse:
        """Run a hybrid search. Pass a :class:`SearchRequest`, or its fields as keywords.

        The pipeline: encode -> retrieve per signal -> fuse the whole candidate window
        (ties: best signal rank, then document id) -> hide -> boosts (business and rule
        boosts on the window-normalised fused score) -> collapse -> pins -> facets and
        total over the window -> freeze the ranking for ``next_cursor`` -> the page,
        each hit explained.
        """
        started = time.perf_counter()
        if request is None:
            try:
                request = SearchRequest.model_validate(fields)
            except ValueError as e:
                raise InvalidQuery(str(e)) from None
        elif fields:
            raise InvalidQuery("pass either a SearchRequest or keyword fields, not both")
        if request.cursor is not None:
            return self._continue(request, started)
        info = self.index_info()
        query, plan, matched = self._prepare(request, dense)
        rule_boosts = _rules.rule_boosts(matched)
        result = self.backend.search(query)
        weights = [r.weight for r in query.retrievers]

        # fuse: the whole window, ties in each signal and in the fusion broken by document id
        lists = [_stable(ranked) for ranked in result.lists]
        reordered = any([r.id for r in a] != [r.id for r in b] for a, b in zip(lists, result.lists, strict=True))
        per_signal: dict[str, dict[str, tuple[float, int]]] = {}
        for retriever, ranked in zip(query.retrievers, lists, strict=True):
            table: dict[str, tuple[float, int]] = {}
            for position, item in enumerate(ranked, start=1):
                table.setdefault(item.id, (item.score, position))
            per_signal[retriever.signal] = table
        union = {r.id for ranked in lists for r in ranked}
        # the engine's fusion is used when it ranked the whole window from the same ordered lists
        if result.fused is not None and not reordered and {r.id for r in result.fused} == union:
            best = {
                doc: min(t[doc][1] for t in per_signal.values() if doc in t)
                for doc in {r.id for r in result.fused}
                if any(doc in t for t in per_signal.values())
            }
            engine = sorted(result.fused, key=lambda r: (-r.score, best.get(r.id, 1 << 30), r.id))
            ranking = []
            for r in engine:
                if r.id in union:
                    union.discard(r.id)  # first (best) occurrence only
                    ranking.append((r.id, r.score))
            fused_by = "engine"
        else:
            ranking = fusion.fused_order(
                _NORMALISATION[request.fusion],  # type: ignore[arg-type]
                lists,
                k=request.rrf_k,
                weights=weights,
            )
            fused_by = "client"
        contributions = ranking_steps.signal_contributions(request.fusion, lists, weights=weights, k=request.rrf_k)
        signals: list[str] = [r.signal for r in query.retrievers]
        payloads: dict[str, dict[str, Any]] = dict(result.payloads)
        complete = result.complete_payloads

        # rules: hidden documents leave the window first
        hidden = _rules.hidden_ids(matched)
        if hidden:
            ranking = [(doc, score) for doc, score in ranking if doc not in hidden]
        pins = _rules.pins_of(matched, hidden)

        # boosts (business + rules) over the whole window
        boosts: list[tuple[AnyBoost, str]] = list(plan.boosts)
        rule_of: dict[int, str] = {}
        for boost, label, rule_id in rule_boosts:
            rule_of[len(boosts)] = rule_id
            boosts.append((boost, label))
        candidates = ranking_steps.apply_boosts(ranking, payloads, boosts, rule_of=rule_of)

        # pinned documents outside the window: shown only if they pass the filters
        in_window = {c.id for c in candidates}
        outside = [p.id for p in pins if p.id not in in_window]
        if outside and isinstance(self.backend, Fetchable):
            fetched = self.backend.fetch(outside)
            for doc in outside:
                payload = fetched.get(doc)
                if (
                    payload is not None
                    and ranking_steps.payload_matches(payload, query.filters)
                    and ranking_steps.payload_matches_tree(payload, query.where)
                ):
                    payloads[doc] = payload
                    candidates.append(Candidate(id=doc, fused=0.0, score=0.0))

        # collapse, then pins at their positions in what the shopper sees
        pinned_ids = [p.id for p in pins]
        if request.collapse is not None:
            groups = collapse_steps.collapse(candidates, payloads, request.collapse.field, heads=pinned_ids)
        else:
            groups = collapse_steps.singletons(candidates)
        groups = _rules.place_pins(groups, pins)

        # facets and total over the window, or over every match (counted by the engine)
        facets: dict[str, dict[str, int]] = {}
        stats: dict[str, FacetStats] = {}
        full = any(len(ranked) >= query.candidates for ranked in result.lists)
        total = Total(value=len(groups), relation="gte" if full else "eq")
        if request.facets:
            counted = {name: info.fields[name] for name in request.facets}
            if request.facet_scope == "matches" and isinstance(self.backend, Facetable):
                counts = self.backend.count_facets(self._facet_query(request, query, counted))
                facets, stats = counts.facets, counts.stats
                total = Total(value=counts.total, relation="eq")
            else:
                members = [[payloads.get(doc, {}) for doc in group.ids] for group in groups]
                facets, stats = facet_steps.count_facets(members, counted, max_values=request.max_values_per_facet)

        frozen = FrozenRanking(
            **self._columns(groups, request, per_signal, contributions, signals, payloads),
            k=request.k,
            fusion=request.fusion,
            fused_by=fused_by,
            total=total,
            facets=facets,
            facets_stats=stats,
            facet_scope=request.facet_scope if request.facets else None,
            facets_count=("groups" if request.collapse is not None else "documents") if request.facets else None,
            collapsed_by=request.collapse.field if request.collapse is not None else None,
            rules_applied=[r.id for r in matched],
        )
        end = request.offset + request.k
        next_cursor = None
        if self.cursors is not None and end < len(frozen):
            next_cursor = self.cursors.token(self.cursors.freeze(frozen), end)
        return self._respond(frozen, request.offset, end, payloads if complete else None, next_cursor, started)

    def _facet_query(self, request: SearchRequest, query: HybridQuery, fields: dict[str, FieldType]) -> FacetQuery:
        """The set ``facet_scope: "matches"`` counts: the query's filters and keywords (see :class:`FacetQuery`)."""
        text = request.text if request.text is not None and request.text.strip() else None
        sparse = self.bm25.encode_query(text) if text is not None and self.backend.lexical == "sparse" else None
        return FacetQuery(
            fields=fields,
            filters=query.filters,
            where=query.where,
            text=text,
            sparse=sparse,
            max_values=request.max_values_per_facet,
            group_by=request.collapse.field if request.collapse is not None else None,
        )

    def _columns(
        self,
        groups: list[collapse_steps.Group],
        request: SearchRequest,
        per_signal: dict[str, dict[str, tuple[float, int]]],
        contributions: list[dict[str, float]],
        signals: list[str],
        payloads: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        """The ranked window as :class:`FrozenRanking`'s columns: each hit explained (see :meth:`search`)."""
        heads = [g.head for g in groups]
        ids = [h.id for h in heads]
        scores = [float(h.score) for h in heads]
        fused = [h.fused for h in heads]
        normalised = [h.normalised for h in heads]
        raw: list[list[float | None]] = []
        ranks: list[list[int | None]] = []
        parts: list[list[float | None]] = []
        for signal, table in zip(signals, contributions, strict=True):
            found = per_signal[signal]
            entries = [found.get(doc) for doc in ids]
            raw.append([None if e is None else e[0] for e in entries])
            ranks.append([None if e is None else e[1] for e in entries])
            parts.append([None if e is None else table.get(doc, 0.0) for doc, e in zip(ids, entries, strict=True)])
        variants: dict[int, list[Variant]] = {}
        if request.collapse is not None:
            wanted, most = request.collapse.fields, request.collapse.max_variants
            for i, group in enumerate(groups):
                if group.variants:
                    variants[i] = [
                        Variant(
                            id=v.id,
                            score=v.score,
                            payload={f: p[f] for f in wanted if f in (p := payloads.get(v.id, {}))},
                        )
                        for v in group.variants[:most]
                    ]
        return {
            "ids": ids,
            "scores": scores,
            "fused": None if fused == scores else fused,
            "normalised": None if all(n is None for n in normalised) else normalised,
            "signals": signals,
            "signal_scores": raw,
            "signal_ranks": ranks,
            "contributions": parts,
            "boosts": {i: h.boosts for i, h in enumerate(heads) if h.boosts},
            "rules": {i: h.rule for i, h in enumerate(heads) if h.rule is not None},
            "groups": {i: g.key for i, g in enumerate(groups) if g.key is not None},
            "variants": variants,
        }

    def _respond(
        self,
        frozen: FrozenRanking,
        start: int,
        end: int,
        payloads: dict[str, dict[str, Any]] | None,
        next_cursor: str | None,
        started: float,
    ) -> SearchResponse:
        """The response for one page (the frozen hits ``start:end``): its hits with their full payloads."""
        ids = frozen.ids[start:end]
        have = payloads or {}
        missing = [doc for doc in ids if doc not in have]
        if missing and isinstance(self.backend, Fetchable):
            have = {**have, **self.backend.fetch(missing)}
        hits = frozen.page(start, end, have)
        return SearchResponse(
            hits=hits,
            fusion=frozen.fusion,
            fused_by=frozen.fused_by,
            took_ms=(time.perf_counter() - started) * 1000.0,
            total=frozen.total,
            facets=frozen.facets,
            facets_stats=frozen.facets_stats,
            facet_scope=frozen.facet_scope,
            facets_count=frozen.facets_count,
            collapsed_by=frozen.collapsed_by,
            rules_applied=frozen.rules_applied,
            next_cursor=next_cursor,
        )

    def _continue(self, request: SearchRequest, started: float) -> SearchResponse:
        """The next page of a frozen ranking."""
        if self.cursors is None:
            raise InvalidQuery("this searcher keeps no cursors (cursors=None): page with 'offset' instead")
        frozen, key, offset = self.cursors.load(request.cursor or "")
        k = request.k if "k" in request.model_fields_set else frozen.k
        end = offset + k
        next_cursor = self.cursors.token(key, end) if end < len(frozen) else None
        return self._respond(frozen, offset, end, None, next_cursor, started)


@dataclasses.dataclass
class _Plan:
    boosts: list[tuple[AnyBoost, str]]
    window_fields: set[str]


_TEXT_FIELDS = ("title", "caption", "description", "images")


def _of(fields: Mapping[str, str], kind: str) -> str:
    return ", ".join(sorted(name for name, k in fields.items() if k == kind)) or "none"


def _stable(ranked: list[Ranked]) -> list[Ranked]:
    return ranking_steps.tie_order(ranked)
