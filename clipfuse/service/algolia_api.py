"""The Algolia-compatible routes of ``clipfuse serve``: ``POST /1/indexes/*/queries`` and ``/1/indexes/{index}/query``.

Thin: read the body, check the key, hand each request to :func:`run_query`, which turns
Algolia parameters into one :class:`~clipfuse.schemas.SearchRequest` (see
:mod:`clipfuse.service.algolia`), runs it through the service's
:class:`~clipfuse.plugin.HybridSearcher` and shapes the answer. Every error is in
Algolia's shape, ``{"message": ..., "status": N}``, which the JavaScript clients show.

How a query is answered: the searcher ranks a window of ``CLIPFUSE_SERVICE__ALGOLIA_WINDOW``
candidates per signal (1000), the same window for every page of a query, so pages cut
one ranking and never overlap; ``distinct`` is the searcher's collapse (one hit per
``group_id``), facets and ``facets_stats`` its window facets (groups when collapsed, as
Algolia's ``facetingAfterDistinct: true``), ``nbHits`` its total. An empty query
(InstantSearch's first search) ranks every product that passes the filters by the
model's embedding of the empty text, with keyword matching off.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from clipfuse.errors import BackendError, BackendUnavailable, ClipfuseError, InvalidDocument, InvalidQuery
from clipfuse.schemas import ImageSource, SearchRequest, Weights
from clipfuse.service.algolia import (
    AlgoliaError,
    AlgoliaParams,
    encode_params,
    facet_names,
    filters_of,
    read_params,
    request_params,
    shape_hit,
)

if TYPE_CHECKING:
    from clipfuse.plugin.searcher import HybridSearcher
    from clipfuse.service.app import Service

__all__ = ["algolia_router", "run_query"]

MAX_REQUESTS = 50
#: placeholder text of a query with neither words nor image (its dense vector is the empty text's)
_BROWSE_TEXT = "*"


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"message": message, "status": status}, status_code=status, headers=headers)


def _credential(request: Request, name: str) -> str | None:
    return request.headers.get(name) or request.query_params.get(name) or request.query_params.get(name.lower())


def _check_key(service: Service, request: Request) -> JSONResponse | None:
    conf = service.settings.service
    if conf.algolia_app_id is not None:
        app_id = _credential(request, "x-algolia-application-id")
        if app_id != conf.algolia_app_id:
            return _error(403, "Invalid Application-ID or API key")
    expected = conf.algolia_api_key
    if expected is not None and expected.get_secret_value():
        key = _credential(request, "x-algolia-api-key")
        if not key or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
            return _error(403, "Invalid Application-ID or API key")
    return None


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        # algoliasearch sends JSON as text/plain or form-urlencoded (no CORS preflight): read it as JSON whatever
        body = json.loads(raw or b"{}")
    except ValueError as e:
        raise AlgoliaError(f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise AlgoliaError("the body must be a JSON object")
    return body


def _image(value: str | None) -> ImageSource | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.lower().startswith(("http://", "https://")):
        return ImageSource(url=value)
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    return ImageSource(data=value)


def _search_request(params: AlgoliaParams, extra: Mapping[str, Any]) -> tuple[SearchRequest, bool]:
    """The SearchRequest for one Algolia query; second item: whether it is a browse (no words, no image)."""
    filters, where = filters_of(params)
    weights = params.clipfuseWeights or Weights()
    text = params.query if params.query.strip() else None
    try:
        image = _image(params.clipfuseImage)
    except ValidationError as e:
        raise AlgoliaError(f"clipfuseImage: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    browse = text is None and image is None
    if browse:
        text = _BROWSE_TEXT
        if weights.image == 0 and weights.text == 0:
            weights = Weights()
        weights = Weights(image=weights.image, text=weights.text, bm25=0.0)
    fields_wanted: dict[str, Any] = {
        "text": text,
        "image": image,
        "weights": weights,
        "filters": filters,
        "where": where,
        **extra,
    }
    if params.clipfuseFusion is not None:
        fields_wanted["fusion"] = params.clipfuseFusion
    try:
        return SearchRequest.model_validate(fields_wanted), browse
    except ValidationError as e:
        raise AlgoliaError("; ".join(str(x["msg"]).removeprefix("Value error, ") for x in e.errors()[:3])) from None


class _Dense:
    """Query vectors shared by the requests of one multi-query (InstantSearch repeats the query per facet)."""

    def __init__(self, searcher: HybridSearcher) -> None:
        self.searcher = searcher
        self.cache: dict[str, np.ndarray] = {}

    def vector(self, request: SearchRequest, browse: bool) -> np.ndarray | None:
        if request.weights.image == 0 and request.weights.text == 0:
            return None
        image = request.image.model_dump_json() if request.image is not None else ""
        key = json.dumps(["" if browse else request.text, image, request.compose_alpha])
        if key not in self.cache:
            if browse:
                embedder = self.searcher._embedder()
                self.cache[key] = np.asarray(embedder.embed_texts([""])[0], dtype=np.float32)
            else:
                self.cache[key] = self.searcher.encode_query(request)
        return self.cache[key]


def run_query(
    service: Service, searcher: HybridSearcher, raw: Mapping[str, Any], index: str, base_url: str, dense: _Dense
) -> dict[str, Any]:
    """Answer one Algolia query (``raw``: its merged parameters) in Algolia's response shape."""
    started = time.perf_counter()
    conf = service.settings.service
    if index != service.settings.index:
        raise AlgoliaError(f"Index {index} does not exist (this service searches {service.settings.index!r})", 404)
    params = read_params(raw)
    info = searcher.index_info()
    facets = facet_names(params.facets, info.fields)
    per_page = params.hitsPerPage
    if params.offset is not None or params.length is not None:
        start = params.offset or 0
        size = params.length if params.length is not None else per_page
    else:
        start, size = params.page * per_page, per_page
    window = conf.algolia_window
    extra: dict[str, Any] = {
        # the same window for every page of a query, so pages cut one ranking
        "candidates": window,
        "k": max(1, min(size, window)),
        "offset": min(start, window),
        "facets": facets,
        "max_values_per_facet": params.maxValuesPerFacet,
    }
    if params.distinct_count:
        if params.distinct_count > 1:
            raise AlgoliaError("distinct above 1 is not supported: distinct=true shows one hit per group")
        field = params.clipfuseDistinctField or conf.algolia_distinct_field
        if field not in info.fields:
            raise AlgoliaError(
                f"distinct: the index has no attribute {field!r} to collapse on; give clipfuseDistinctField or set "
                "CLIPFUSE_SERVICE__ALGOLIA_DISTINCT_FIELD to a keyword attribute"
            )
        extra["collapse"] = {"field": field}
    request, browse = _search_request(params, extra)
    response = searcher.search(request, dense=dense.vector(request, browse))
    page_hits = [] if size == 0 or start >= window else list(response.hits)[:size]
    hits = []
    for hit in page_hits:
        record = dict(hit.payload)
        url = service.image_url(record.get("images"), "")
        if url is not None:
            record["image_url"] = url if url.startswith(("http://", "https://")) else base_url.rstrip("/") + url
        hits.append(shape_hit(hit, params, record=record, fusion=response.fusion, fused_by=response.fused_by))
    total = response.total
    nb_hits = total.value if total is not None else len(hits)
    exhaustive = total is None or total.relation == "eq"
    answer: dict[str, Any] = {
        "hits": hits,
        "nbHits": nb_hits,
        "page": params.page if params.offset is None else (start // per_page if per_page else 0),
        "nbPages": math.ceil(nb_hits / per_page) if per_page else 0,
        "hitsPerPage": per_page,
        "exhaustiveNbHits": exhaustive,
        "exhaustiveFacetsCount": exhaustive,
        "exhaustive": {"nbHits": exhaustive, "facetsCount": exhaustive},
        "query": params.query,
        "params": encode_params(raw),
        "index": index,
    }
    if params.offset is not None or params.length is not None:
        answer["offset"], answer["length"] = start, size
    if facets:
        # number fields have stats, not value lists; InstantSearch's range widgets read facets_stats
        answer["facets"] = {name: dict(response.facets.get(name, {})) for name in facets}
        stats = {
            name: {"min": s.min, "max": s.max, "avg": s.avg, "sum": s.sum} for name, s in response.facets_stats.items()
        }
        if stats:
            answer["facets_stats"] = stats
    answer["processingTimeMS"] = max(1, round((time.perf_counter() - started) * 1000))
    return answer


def _answer(service: Service, entries: Sequence[tuple[str, Mapping[str, Any]]], base_url: str) -> list[dict[str, Any]]:
    searcher = service.ready()
    dense = _Dense(searcher)
    outcome = "ok"
    try:
        with service.engine():
            service._refresh_index_info(searcher)
            return [run_query(service, searcher, raw, index, base_url, dense) for index, raw in entries]
    except (InvalidQuery, InvalidDocument):
        outcome = "invalid"
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        service.metrics.searches.labels("algolia", outcome).inc(len(entries))


def _as_algolia(error: Exception) -> JSONResponse:
    if isinstance(error, AlgoliaError):
        return _error(error.status, error.message)
    if isinstance(error, InvalidQuery):
        return _error(400, error.message)
    if isinstance(error, InvalidDocument):  # the query image
        return _error(413 if error.code == "image_too_large" else 400, f"clipfuseImage: {error.message}")
    if isinstance(error, BackendUnavailable):
        return _error(503, f"the search engine is unavailable: {error.message}")
    if isinstance(error, BackendError):
        return _error(502, f"the search engine failed: {error.message}")
    assert isinstance(error, ClipfuseError)
    return _error(500, error.message)


def algolia_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/1/indexes", tags=["algolia"])
    responses: dict[int | str, dict[str, Any]] = {
        400: {"description": 'a parameter clipfuse cannot read: {"message": ..., "status": 400}'},
        403: {"description": "wrong or missing X-Algolia-API-Key (when one is configured)"},
        404: {"description": "an index this service does not serve"},
    }

    async def answer(request: Request, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        return await run_in_threadpool(_answer, service, entries, str(request.base_url))

    @router.post(
        "/*/queries",
        summary="Algolia multi-query search (what InstantSearch sends)",
        description='Body `{"requests": [{"indexName": ..., "params": "query=...&hitsPerPage=..."}]}`; '
        "params as a URL-encoded string (algoliasearch v4), an object, or flattened into the request (v5).",
        responses=responses,
    )
    async def queries(request: Request) -> JSONResponse:
        refused = _check_key(service, request)
        if refused is not None:
            return refused
        try:
            body = await _json_body(request)
            items = body.get("requests")
            if not isinstance(items, list) or not items:
                raise AlgoliaError('the body needs "requests": a non-empty list of {"indexName", "params"}')
            if len(items) > MAX_REQUESTS:
                raise AlgoliaError(f"{len(items)} requests in one call; at most {MAX_REQUESTS}")
            entries = []
            for position, item in enumerate(items):
                if not isinstance(item, Mapping) or not isinstance(item.get("indexName"), str):
                    raise AlgoliaError(f"requests[{position}] needs an indexName")
                entries.append((str(item["indexName"]), request_params(item)))
            results = await answer(request, entries)
        except ClipfuseError as e:
            return _as_algolia(e)
        return JSONResponse({"results": results})

    @router.post(
        "/{index}/query",
        summary="Algolia single-index search",
        description='Body `{"params": "query=...&hitsPerPage=..."}` or the parameters as an object.',
        responses=responses,
    )
    async def query(index: str, request: Request) -> JSONResponse:
        refused = _check_key(service, request)
        if refused is not None:
            return refused
        try:
            body = await _json_body(request)
            result = (await answer(request, [(index, request_params(body))]))[0]
        except ClipfuseError as e:
            return _as_algolia(e)
        return JSONResponse(result)

    return router
