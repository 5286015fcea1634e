"""The HTTP search service: search API, ingestion through the broker, health, metrics, web page.

``create_app(settings)`` builds the FastAPI app; the engine backend and the model are
opened once, at startup (the model recorded in the index unless one is configured
explicitly). Tests inject their own ``searcher`` / ``backend``.

Nothing a client sends reaches the engine as query text: searches go through
:class:`~clipfuse.plugin.HybridSearcher` (filters checked against the index's fields
and sent as structured conditions), uploads and bodies are bounded before they are
read, and local files are only ever read from under the configured catalog folder.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError

from clipfuse.errors import (
    BackendError,
    BackendUnavailable,
    ClipfuseError,
    ConfigurationError,
    EmbeddingError,
    InvalidDocument,
    InvalidQuery,
)
from clipfuse.images import ImageLimits, ImageLoader
from clipfuse.plugin.protocol import Aliased, Embedded, Warmable, is_embedded
from clipfuse.schemas import (
    Document,
    Hit,
    ImageSource,
    SearchRequest,
    SearchResponse,
    Weights,
    parse_filter,
    parse_weights,
)
from clipfuse.schemas import limits as L
from clipfuse.schemas.search import Variant
from clipfuse.service.algolia_api import algolia_router
from clipfuse.service.facets import Facets, compute_facets
from clipfuse.service.limits import BodyLimitMiddleware
from clipfuse.service.metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from clipfuse.service.security import SecurityHeadersMiddleware
from clipfuse.service.ui import PageConfig, page_config
from clipfuse.settings import Settings

#: the library's default mix of image and modifier text, so the form and the JSON API rank alike
_DEFAULT_COMPOSE_ALPHA: float = SearchRequest.model_fields["compose_alpha"].default

if TYPE_CHECKING:
    from clipfuse.plugin.protocol import Backend
    from clipfuse.plugin.searcher import HybridSearcher

__all__ = ["STATIC_DIR", "ErrorBody", "ServiceHit", "ServiceSearchResponse", "create_app", "resolve_under"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")
_SMALL_BODY = 64 * 1024


# -- response models ----------------------------------------------------------------------
class ServiceVariant(Variant):
    #: the variant's first image, when the request asked for ``images`` in ``collapse.fields``
    image_url: str | None = None


class ServiceHit(Hit):
    #: where the web page can load the product's first image (``/images/...`` or the product's URL)
    image_url: str | None = None
    variants: list[ServiceVariant] = Field(default_factory=list)  # type: ignore[assignment]


class ServiceSearchResponse(SearchResponse):
    hits: list[ServiceHit]  # type: ignore[assignment]


class DocumentsRequest(BaseModel):
    """Documents to (re)index: each replaces the indexed document with the same id."""

    documents: Annotated[list[Document], Field(min_length=1, max_length=L.MAX_DOCUMENTS_PER_MESSAGE * 100)]


class Enqueued(BaseModel):
    """What was handed to the broker (the workers index it shortly after)."""

    operation: Literal["upsert", "delete"]
    #: documents (or ids) sent to the broker
    accepted: int
    ids: list[str]
    #: documents the producer refused before sending, with their reasons
    refused: list[dict[str, Any]] = []
    #: the producer's report (messages, bytes, seconds)
    result: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """Every error answer of the service (4xx, 5xx): ``detail`` says what was wrong, for people."""

    detail: str
    #: a machine code, for a document or query image that cannot be used (``image_too_large``, ...)
    code: str | None = None
    #: a 422 from request validation: each problem's location, message and type (the input is never echoed)
    errors: list[dict[str, Any]] | None = None


_ERROR_DESCRIPTIONS = {
    400: "a request the index cannot answer (an unknown filter field, an image that cannot be decoded) "
    "or a malformed Content-Length",
    401: "missing or wrong X-API-Key header",
    403: "write endpoints are disabled: the operator has set no API key",
    404: "no such image in the catalog folder, or no catalog folder configured",
    413: "a body, an upload or an image over its size limit",
    422: "the request does not validate: `detail` summarises, `errors` lists each problem",
    502: "the search engine failed",
    503: "the search engine or the broker is unavailable: retry later (see Retry-After)",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the ErrorBody schema."""
    return {status: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}


class Check(BaseModel):
    ok: bool
    detail: dict[str, Any] = {}


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, Check]


# -- helpers ------------------------------------------------------------------------------
def resolve_under(root: Path, raw: str) -> Path | None:
    """``raw`` (relative to ``root``, or absolute) as an existing file under ``root``, or None.

    Symbolic links are followed before the check, so a link cannot lead out of ``root``.
    """
    if not raw or "\x00" in raw or len(raw) > L.MAX_PATH_CHARS:
        return None
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve(strict=True)
        base = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(base) or not resolved.is_file():
        return None
    return resolved


def _readable(errors: list[Any], limit: int = 5) -> str:
    parts = []
    for item in errors[:limit]:
        loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path", "form")]
        msg = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    more = len(errors) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _clean_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic errors without the offending input (it may be megabytes of base64)."""
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors[:50]
    ]


def _parse_weights(spec: str | None) -> Weights:
    try:
        return parse_weights(spec)
    except InvalidQuery as e:
        raise HTTPException(422, e.message) from None


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _mode(request: SearchRequest) -> str:
    if request.image is not None and request.text is not None:
        return "image+text"
    return "image" if request.image is not None else "text"


def check_broker(url: str, timeout_s: float) -> None:
    """Connect to the broker (Redis: PING; RabbitMQ: open a connection); raise on failure."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss", "redis+socket"):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    elif scheme in ("amqp", "amqps", "pyamqp"):
        from kombu import Connection

        with Connection(url, connect_timeout=timeout_s) as connection:
            connection.ensure_connection(max_retries=1)
    else:
        raise ConfigurationError(f"cannot check broker scheme {scheme!r}: use redis:// or amqp://")


def _broker_client_installed(url: str) -> bool:
    """Whether the client library of the broker at ``url`` is installed (``clipfuse[workers]``)."""
    import importlib.util

    scheme = urlsplit(url).scheme.lower()
    return importlib.util.find_spec("redis" if scheme.startswith("redis") else "kombu") is not None


# -- the service state --------------------------------------------------------------------
class Service:
    """What the app holds: settings, the searcher (model loaded once), caches, metrics."""

    def __init__(
        self, settings: Settings, *, searcher: HybridSearcher | None = None, backend: Backend | None = None
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.searcher = searcher
        self.backend: Backend | None = searcher.backend if searcher is not None else backend
        self._owns_backend = searcher is None and backend is None
        self.model_id: str | None = None
        self.started = False
        self._start_lock = threading.Lock()
        self._engine_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._info_at = 0.0
        #: the alias's target the searcher is on, when the index is an alias; when it was last checked
        self._target: str | None = None
        self._alias_at = 0.0
        self._embedders: dict[str, Any] = {}
        self._retired: list[Any] = []
        self._facets: tuple[float, Facets] | None = None
        self._rules_lock = threading.Lock()
        self._rules_checked_at = 0.0
        self._rules_signature_loaded: tuple[int, int] | None = None
        #: why the rules file last failed to load (None: the rules in use are the file's)
        self.rules_error: str | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="clipfuse-health")
        root = settings.service.catalog_root
        self.catalog_root = Path(root).resolve() if root is not None else None

    # lifecycle
    def start(self) -> None:
        with self._start_lock:
            if self.started:
                return
            from clipfuse.factory import build_cursors
            from clipfuse.plugin.searcher import HybridSearcher

            if self.backend is None:
                from clipfuse.factory import build_backend

                self.backend = build_backend(self.settings)
                if isinstance(self.backend, Warmable):  # Qdrant Edge: learn the point -> document id map once
                    self.backend.warm_ids()
            if isinstance(self.backend, Embedded) and self.backend.embedded and not self.backend.thread_safe:
                self._engine_lock = threading.RLock()  # the embedded store is not made for concurrent threads
            if self.searcher is None:
                from clipfuse.reindex.writer import resolve_alias

                searched = self.backend
                try:
                    record = resolve_alias(self.backend, self.settings.index)
                    if record is not None and isinstance(self.backend, Aliased):
                        # pinned to the physical index: its model is the model queries are embedded with
                        searched = self.backend.open_index(record.target)
                        self._target = record.target
                    info = searched.index_info()
                except BackendError as e:
                    log.warning("cannot read the index at startup (%s); using the configured model", e)
                    info = None
                explicit = "name" in self.settings.model.model_fields_set
                embedder = self._embedder_for(info.model if info else None, explicit=explicit)
                self.searcher = HybridSearcher(
                    searched,
                    embedder=embedder,
                    image_loader=self._image_loader(),
                    cursors=build_cursors(self.settings),
                )
                self._alias_at = time.monotonic()
            if self.settings.search.rules_file is not None:
                self.reload_rules(force=True)
                if self.rules_error is not None:
                    raise ConfigurationError(f"rules file {self.settings.search.rules_file}: {self.rules_error}")
            loaded = self.searcher.embedder
            self.model_id = getattr(loaded, "model_id", None) if loaded is not None else None
            self.started = True
            log.info("clipfuse service ready: index %s, model %s", self.settings.index, self.model_id)

    def _embedder_for(self, model_id: str | None, *, explicit: bool = False) -> Any:
        """The query embedder of a recorded model, loaded once per model."""
        from clipfuse.factory import build_query_embedder, model_settings_for_index

        key = "" if explicit or not model_id else model_id
        embedder = self._embedders.get(key)
        if embedder is None:
            model = model_settings_for_index(self.settings, model_id, explicit=explicit)
            embedder = build_query_embedder(model)  # text tower per CLIPFUSE_MODEL__TEXT_ENCODER, LRU cache
            load = getattr(embedder, "load", None)
            if callable(load):
                load()
            self._embedders[key] = embedder
        return embedder

    def follow_alias(self) -> HybridSearcher:
        """The searcher for the alias's current target: after a swap or a rollback, a searcher on the new
        target with the model it was built with (checked every ``alias_check_s``; searches in flight finish
        on the old index, which is kept as the previous one). Never raises: on trouble it keeps the old one."""
        searcher = self.ready()
        interval = self.settings.service.alias_check_s
        if self._target is None or not self._owns_backend or time.monotonic() - self._alias_at < interval:
            return searcher
        self._alias_at = time.monotonic()
        from clipfuse.plugin.searcher import HybridSearcher
        from clipfuse.reindex.writer import resolve_alias

        root = self.backend
        try:
            with self.engine():
                record = resolve_alias(root, self.settings.index) if root is not None else None
                if record is None or record.target == self._target or not isinstance(root, Aliased):
                    return searcher
                backend = root.open_index(record.target)
                if isinstance(backend, Warmable):
                    backend.warm_ids()
                info = backend.index_info()
            embedder = self._embedder_for(info.model if info else None)
        except Exception as e:  # e.g. the new shard still held by the re-index process: try again later
            log.warning("the alias %s moved but cannot follow it yet: %s", self.settings.index, e)
            return searcher
        # the same cursor store (a page started before the move still continues) and the same rules
        following = HybridSearcher(
            backend, embedder=embedder, image_loader=self._image_loader(), cursors=searcher.cursors
        )
        following.rules = searcher.rules
        log.info(
            "alias %s moved: %s -> %s (model %s)", self.settings.index, self._target, record.target, info and info.model
        )
        self._retired.append(searcher.backend)
        self.searcher, self._target = following, record.target
        self.model_id = getattr(embedder, "model_id", None)
        self._info_at = 0.0
        self._facets = None
        return following

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._owns_backend and self.backend is not None:
            current = self.searcher.backend if self.searcher is not None else None
            for backend in [*self._retired, current]:
                if backend is not None and backend is not self.backend:
                    with contextlib.suppress(Exception):
                        backend.close()
            with contextlib.suppress(Exception):
                self.backend.close()

    def _image_loader(self) -> ImageLoader:
        images = self.settings.images
        return ImageLoader(
            ImageLimits(
                max_bytes=min(images.max_bytes, self.settings.service.max_upload_bytes),
                max_pixels=images.max_pixels,
                fetch_timeout_s=images.fetch_timeout_s,
                allow_private_urls=images.allow_private_urls,
                allowed_networks=tuple(images.allowed_networks),
            ),
            base_dir=self.catalog_root,
            path_roots=(self.catalog_root,) if self.catalog_root is not None else None,
        )

    def ready(self) -> HybridSearcher:
        if not self.started:
            self.start()
        assert self.searcher is not None
        return self.searcher

    @contextlib.contextmanager
    def engine(self) -> Iterator[None]:
        with self._engine_lock:
            yield

    # search
    def _refresh_index_info(self, searcher: HybridSearcher) -> None:
        now = time.monotonic()
        if now - self._info_at < self.settings.service.index_info_ttl_s:
            return
        with contextlib.suppress(InvalidQuery):  # no index yet: the search says so
            searcher.index_info(refresh=True)
        self._info_at = now

    def checked_image(self, request: SearchRequest) -> SearchRequest:
        image = request.image
        if image is None:
            return request
        if image.path is not None:
            if self.catalog_root is None:
                raise HTTPException(
                    400,
                    "image 'path' is not accepted by this service (no catalog folder is configured): send the image "
                    "as 'url' or base64 'data', or upload it to POST /search/image",
                )
            resolved = resolve_under(self.catalog_root, image.path)
            if resolved is None:
                raise HTTPException(
                    400,
                    f"image path {image.path[:200]!r} is not a file under the catalog folder: give a path relative to "
                    "it, as in a hit's payload 'images'",
                )
            return request.model_copy(update={"image": ImageSource(path=str(resolved))})
        if image.data is not None:
            size = len(image.data) * 3 // 4
            limit = self.settings.service.max_upload_bytes
            if size > limit:
                raise HTTPException(
                    413,
                    f"inline image of about {size:,} bytes is over the limit of {limit:,} bytes: send a smaller image "
                    "(the operator can raise CLIPFUSE_SERVICE__MAX_UPLOAD_BYTES)",
                )
        return request

    def search(self, request: SearchRequest, root_path: str) -> ServiceSearchResponse:
        searcher = self.follow_alias()
        self.reload_rules()
        mode = _mode(request)
        started = time.perf_counter()
        try:
            with self.engine():
                self._refresh_index_info(searcher)
                response = searcher.search(request)
        except (InvalidQuery, InvalidDocument):
            self.metrics.searches.labels(mode, "invalid").inc()
            raise
        except Exception:
            self.metrics.searches.labels(mode, "error").inc()
            raise
        self.metrics.searches.labels(mode, "ok").inc()
        self.metrics.search_latency.labels(mode).observe(time.perf_counter() - started)
        hits = [
            ServiceHit(
                **hit.model_dump(exclude={"variants"}),
                image_url=self.image_url(hit.payload.get("images"), root_path),
                variants=[
                    ServiceVariant(**v.model_dump(), image_url=self.image_url(v.payload.get("images"), root_path))
                    for v in hit.variants
                ],
            )
            for hit in response.hits
        ]
        return ServiceSearchResponse(**response.model_dump(exclude={"hits"}), hits=hits)

    # merchandising rules
    def _rules_signature(self, path: Path) -> tuple[int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def reload_rules(self, *, force: bool = False) -> None:
        """Load the rules file when it changed (checked at most every ``rules_reload_s``).

        A file that fails to load or to validate keeps the rules in use, and the reason is
        logged and shown by ``GET /healthz``; a missing index postpones the first load.
        """
        path = self.settings.search.rules_file
        if path is None or self.searcher is None:
            return
        now = time.monotonic()
        interval = self.settings.search.rules_reload_s
        if not force and (interval == 0 or now - self._rules_checked_at < interval):
            return
        with self._rules_lock:
            if not force and now - self._rules_checked_at < interval:
                return
            self._rules_checked_at = now
            signature = self._rules_signature(Path(path))
            if not force and signature == self._rules_signature_loaded:
                return
            try:
                with self.engine():
                    ruleset = self.searcher.load_rules(path)
            except InvalidQuery as e:  # no index yet: load when there is one
                log.info("rules file %s not loaded yet: %s", path, e.message)
                return
            except ClipfuseError as e:
                self.rules_error = e.message
                self._rules_signature_loaded = signature
                log.error("rules file %s was not (re)loaded, the previous rules stay in use: %s", path, e.message)
                return
            self._rules_signature_loaded = signature
            self.rules_error = None
            log.info("rules file %s loaded: %d rules", path, len(ruleset.rules))

    def image_url(self, images: Any, root_path: str) -> str | None:
        if not isinstance(images, list) or not images or not isinstance(images[0], str):
            return None
        ref = images[0]
        if ref.lower().startswith(("http://", "https://")):
            return ref
        if self.catalog_root is None or ref == "inline":
            return None
        path = Path(ref)
        if path.is_absolute():
            try:
                path = path.relative_to(self.catalog_root)
            except ValueError:
                return None
        if ".." in path.parts:
            return None
        return f"{root_path}/images/{quote(path.as_posix())}"

    # facets
    def facets(self) -> Facets:
        cached = self._facets
        ttl = self.settings.service.facet_ttl_s
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        searcher = self.ready()
        with self.engine():
            try:
                info = searcher.index_info(refresh=True)
            except InvalidQuery:
                info = None
            service = self.settings.service
            result = compute_facets(
                searcher.backend,
                self.settings.index,
                dict(info.fields) if info else {},
                model=info.model if info else None,
                dim=info.dim if info else None,
                sample=service.facet_sample,
                max_values=service.facet_max_values,
            )
        self._facets = (time.monotonic(), result)
        return result

    # health
    def _timed(self, fn: Callable[[], dict[str, Any]]) -> Check:
        timeout = self.settings.service.health_timeout_s
        try:
            detail = self._pool.submit(fn).result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            return Check(ok=False, detail={"error": f"no answer within {timeout:g}s"})
        except Exception as e:
            return Check(ok=False, detail={"error": f"{type(e).__name__}: {str(e)[:500]}"})
        return Check(ok=True, detail=detail)

    def health(self) -> Health:
        checks: dict[str, Check] = {}
        try:
            searcher = self.ready()
            checks["model"] = Check(ok=True, detail={"model": self.model_id})
        except ClipfuseError as e:
            checks["model"] = Check(ok=False, detail={"error": str(e)[:500]})
            searcher = None
        backend = searcher.backend if searcher is not None else self.backend

        def engine() -> dict[str, Any]:
            if backend is None:
                raise ConfigurationError("no search engine backend")
            with self.engine():
                info = backend.index_info()
                count = backend.count() if info is not None else 0
            return {
                "engine": backend.name,
                "index": self.settings.index,
                "index_exists": info is not None,
                "documents": count,
            }

        checks["backend"] = self._timed(engine)
        rules_file = self.settings.search.rules_file
        if rules_file is not None:
            in_use = len(searcher.rules.rules) if searcher is not None else 0
            detail: dict[str, Any] = {"file": str(rules_file), "rules": in_use}
            if self.rules_error is not None:  # still serving, with the previous rules: not a failed check
                detail["error"] = self.rules_error
                detail["serving"] = "the previous rules"
            checks["rules"] = Check(ok=True, detail=detail)
        with_broker = self.settings.service.check_broker
        if with_broker is None:  # a query-only install (clipfuse[service]) has no broker client: nothing to check
            # an embedded store (Qdrant Edge, qdrant-client local mode) is written by this process only: no broker
            with_broker = not is_embedded(backend) and _broker_client_installed(self.settings.broker.url)
        if with_broker:
            url = self.settings.broker.url

            def broker() -> dict[str, Any]:
                check_broker(url, self.settings.service.health_timeout_s)
                return {"url": _redact_url(url)}

            check = self._timed(broker)
            check.detail.setdefault("url", _redact_url(url))
            checks["broker"] = check
        status: Literal["ok", "unavailable"] = "ok" if all(c.ok for c in checks.values()) else "unavailable"
        return Health(status=status, checks=checks)

    # ingestion
    def producer(self) -> Any:
        try:
            from clipfuse.workers import producer
        except ImportError as e:
            raise HTTPException(
                503,
                f"ingestion through the broker is not available in this installation ({e}); index with "
                "`clipfuse index` instead, or install clipfuse with its worker dependencies",
            ) from None
        return producer


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"detail": message, **extra}, status_code=status, headers=headers)


# -- the app ------------------------------------------------------------------------------
def create_app(
    settings: Settings | None = None, *, searcher: HybridSearcher | None = None, backend: Backend | None = None
) -> FastAPI:
    """The FastAPI app of the search service.

    ``searcher`` / ``backend``: injected objects (tests, embedding the service in another
    app); otherwise both are built from ``settings`` at startup.
    """
    settings = settings or Settings()
    service = Service(settings, searcher=searcher, backend=backend)
    conf = settings.service

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="clipfuse",
        summary="Multimodal hybrid search (OpenCLIP + BM25) over a product catalog",
        description=(
            "Search by text, by image, or by an image plus a modifier text; each hit carries every signal's "
            "score (image, text, bm25) and the fused score. Write endpoints need the `X-API-Key` header."
        ),
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service

    def limit_for(path: str) -> tuple[int, str]:
        if path.endswith("/search/image"):
            return conf.max_upload_bytes + _SMALL_BODY, "CLIPFUSE_SERVICE__MAX_UPLOAD_BYTES"
        if path.endswith("/search") or path.startswith("/1/indexes/"):  # the Algolia API may carry clipfuseImage
            return conf.max_upload_bytes * 4 // 3 + _SMALL_BODY, "CLIPFUSE_SERVICE__MAX_UPLOAD_BYTES"
        if path.endswith("/documents") or "/documents/" in path:
            return conf.max_documents_body_bytes, "CLIPFUSE_SERVICE__MAX_DOCUMENTS_BODY_BYTES"
        return _SMALL_BODY, "(fixed)"

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    if conf.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=conf.cors_origins,
            allow_credentials=conf.cors_allow_credentials,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "X-Algolia-API-Key", "X-Algolia-Application-Id"],
            max_age=86400,
        )
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: every answer, errors included, carries them

    # errors -------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return _error(422, _readable(errors), errors=_clean_errors(errors))

    @app.exception_handler(InvalidQuery)
    async def _invalid_query(request: Request, exc: InvalidQuery) -> JSONResponse:
        return _error(400, exc.message)

    @app.exception_handler(InvalidDocument)
    async def _invalid_document(request: Request, exc: InvalidDocument) -> JSONResponse:
        return _error(413 if exc.code == "image_too_large" else 400, exc.message, code=exc.code)

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return _error(503, f"the search engine is unavailable: {exc.message}")

    @app.exception_handler(ConfigurationError)
    async def _configuration(request: Request, exc: ConfigurationError) -> JSONResponse:
        log.error("configuration error: %s", exc.message)
        return _error(500, f"service configuration error: {exc.message}")

    @app.exception_handler(BackendError)
    async def _backend(request: Request, exc: BackendError) -> JSONResponse:
        return _error(502, f"the search engine failed: {exc.message}")

    @app.exception_handler(EmbeddingError)
    async def _embedding(request: Request, exc: EmbeddingError) -> JSONResponse:
        return _error(500, f"the model failed: {exc.message}")

    @app.exception_handler(ClipfuseError)
    async def _clipfuse(request: Request, exc: ClipfuseError) -> JSONResponse:
        return _error(500, exc.message)

    # auth -----------------------------------------------------------------------------
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")

    def require_api_key(key: str | None = Security(api_key_header)) -> None:
        expected = conf.api_key
        if expected is None or not expected.get_secret_value():
            raise HTTPException(
                403, "write endpoints are disabled: the operator has not set an API key (CLIPFUSE_SERVICE__API_KEY)"
            )
        if not key:
            raise HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "APIKey"})
        if not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
            raise HTTPException(401, "wrong API key in X-API-Key", headers={"WWW-Authenticate": "APIKey"})

    # search ---------------------------------------------------------------------------
    @app.post(
        "/search",
        response_model=ServiceSearchResponse,
        tags=["search"],
        summary="Search by text, image (URL or base64 data), or both",
        responses=_errors(400, 413, 422, 502, 503),
    )
    def search(request: Request, body: SearchRequest) -> ServiceSearchResponse:
        return service.search(service.checked_image(body), request.scope.get("root_path", ""))

    @app.post(
        "/search/image",
        response_model=ServiceSearchResponse,
        tags=["search"],
        summary="Search with an uploaded image, optionally with a modifier text ('but in black')",
        responses=_errors(400, 413, 422, 502, 503),
    )
    def search_image(
        request: Request,
        file: Annotated[UploadFile, File(description="the query image (JPEG, PNG, WebP, ...)")],
        text: Annotated[str | None, Form(description="optional modifier text, e.g. 'but in black'")] = None,
        weights: Annotated[str | None, Form(description="image=W,text=W,bm25=W (0 = off)")] = None,
        filter: Annotated[
            list[str], Form(description="repeatable: 'category=shoes', 'price<=120', 'color=red|black'")
        ] = [],  # noqa: B006 - FastAPI copies defaults
        k: Annotated[int, Form(ge=1, le=L.MAX_K)] = 10,
        offset: Annotated[int, Form(ge=0, le=L.MAX_OFFSET)] = 0,
        fusion: Annotated[str, Form(description="rrf | dbsf | linear | zscore")] = "rrf",
        rrf_k: Annotated[float, Form(ge=0, le=L.MAX_RRF_K)] = 60.0,
        compose_alpha: Annotated[float, Form(ge=0, le=1)] = _DEFAULT_COMPOSE_ALPHA,
    ) -> ServiceSearchResponse:
        limit = conf.max_upload_bytes
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(
                413,
                f"uploaded image is over the limit of {limit:,} bytes: send a smaller image "
                "(the operator can raise CLIPFUSE_SERVICE__MAX_UPLOAD_BYTES)",
            )
        if not data:
            raise HTTPException(400, "the uploaded file is empty: send an image file in the 'file' field")
        # decode once here for a clear 400 / 413 before any model work
        service._image_loader().decode(data)
        if len(filter) > L.MAX_FILTERS:
            raise HTTPException(422, f"at most MAX_FILTERS={L.MAX_FILTERS} filters")
        filters = [parse_filter(f) for f in filter if f.strip()]
        try:
            body = SearchRequest.model_validate(
                {
                    "text": text,
                    "image": {"data": base64.b64encode(data).decode("ascii")},
                    "weights": _parse_weights(weights),
                    "filters": filters,
                    "k": k,
                    "offset": offset,
                    "fusion": fusion,
                    "rrf_k": rrf_k,
                    "compose_alpha": compose_alpha,
                }
            )
        except ValidationError as e:
            errors = e.errors()
            raise HTTPException(422, _readable(list(errors))) from None
        return service.search(body, request.scope.get("root_path", ""))

    @app.get(
        "/api/facets",
        response_model=Facets,
        tags=["search"],
        summary="Filterable fields and their values",
        responses=_errors(502, 503),
    )
    def facets() -> Facets:
        return service.facets()

    @app.get(
        "/api/ui",
        response_model=PageConfig,
        tags=["ui"],
        summary="What the web page shows: its facets, its collapse field, the fields of a variant swatch",
        responses=_errors(502, 503),
    )
    def ui_config() -> PageConfig:
        return page_config(conf, service.facets())

    app.include_router(algolia_router(service))

    # ingestion --------------------------------------------------------------------------
    @app.post(
        "/documents",
        status_code=202,
        response_model=Enqueued,
        tags=["ingestion"],
        summary="Enqueue documents for (re)indexing by the workers",
        dependencies=[Depends(require_api_key)],
        responses=_errors(400, 401, 403, 413, 422, 503),
    )
    def post_documents(body: DocumentsRequest) -> Enqueued:
        if len(body.documents) > conf.max_documents_per_request:
            raise HTTPException(
                413,
                f"{len(body.documents)} documents in one request; at most {conf.max_documents_per_request} "
                "(CLIPFUSE_SERVICE__MAX_DOCUMENTS_PER_REQUEST): split the batch",
            )
        for position, doc in enumerate(body.documents):
            if any(image.path is not None for image in doc.images):
                raise HTTPException(
                    422,
                    f"documents.{position} ({doc.id!r}): image 'path' is not accepted over HTTP; send the image as "
                    "'url' or base64 'data' (index catalogs on shared storage with `clipfuse index` or the producer)",
                )
        producer = service.producer()
        raw = [doc.model_dump(mode="json", exclude_none=True) for doc in body.documents]
        report = _call_producer(producer, producer.enqueue, raw, settings)
        answer = _enqueued("upsert", [d.id for d in body.documents], report)
        service.metrics.enqueued.labels("upsert").inc(answer.accepted)
        return answer

    @app.delete(
        "/documents/{doc_id:path}",
        status_code=202,
        response_model=Enqueued,
        tags=["ingestion"],
        summary="Enqueue the deletion of a document",
        dependencies=[Depends(require_api_key)],
        responses={
            **_errors(400, 401, 403, 413, 422, 503),
            404: {"model": ErrorBody, "description": "an id with a line break matches no route"},
        },
    )
    def delete_document(
        doc_id: Annotated[
            str,
            PathParam(
                min_length=1,
                max_length=L.MAX_ID_CHARS,
                pattern=r"^[^\x00-\x1f\x7f]+$",
                description="the document's id (no control characters, as in documents)",
            ),
        ],
    ) -> Enqueued:
        producer = service.producer()
        report = _call_producer(producer, producer.enqueue_delete, [doc_id], settings)
        answer = _enqueued("delete", [doc_id], report)
        service.metrics.enqueued.labels("delete").inc(answer.accepted)
        return answer

    # operations -------------------------------------------------------------------------
    @app.get(
        "/healthz",
        response_model=Health,
        tags=["operations"],
        summary="Engine, broker and model checks",
        responses={503: {"model": Health, "description": "a check failed (the body says which)"}},
    )
    def healthz() -> JSONResponse:
        health = service.health()
        return JSONResponse(health.model_dump(mode="json"), status_code=200 if health.status == "ok" else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "metrics"}},
    )
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # images and the web page -----------------------------------------------------------
    @app.get(
        "/images/{path:path}",
        tags=["ui"],
        summary="A product image of the local catalog",
        response_class=FileResponse,
        responses={
            200: {
                "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in IMAGE_MEDIA_TYPES},
                "description": "the image file",
            },
            **_errors(404, 422),
        },
    )
    def image(path: str) -> FileResponse:
        root = service.catalog_root
        if root is None:
            raise HTTPException(404, "no catalog folder is configured (CLIPFUSE_SERVICE__CATALOG_ROOT)")
        resolved = resolve_under(root, path)
        if resolved is None or resolved.suffix.lower() not in IMAGE_SUFFIXES:
            raise HTTPException(404, "no such image in the catalog folder")
        return FileResponse(
            resolved,
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    if conf.ui:
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(
                STATIC_DIR / "index.html",
                headers={
                    "Content-Security-Policy": (
                        "default-src 'self'; img-src 'self' data: blob: http: https:; "
                        "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
                    ),
                    "Cache-Control": "no-cache",
                },
            )

    return app


def _call_producer(producer: Any, fn: Callable[..., Any], items: list[Any], settings: Settings) -> Any:
    """Run one producer call; broker trouble becomes 503, refusals 422."""
    enqueue_error = getattr(producer, "EnqueueError", ())
    try:
        return fn(items, settings=settings)
    except enqueue_error as e:  # type: ignore[misc]
        raise HTTPException(
            503, f"the broker is unavailable, nothing more was enqueued: {e}", headers={"Retry-After": "5"}
        ) from None
    except (InvalidDocument, InvalidQuery, ValueError) as e:
        raise HTTPException(422, f"the producer refused the request: {e}") from None
    except (ConnectionError, OSError, TimeoutError) as e:
        raise HTTPException(503, f"the broker is unavailable: {e}; retry later", headers={"Retry-After": "5"}) from None


def _enqueued(operation: Literal["upsert", "delete"], ids: list[str], report: Any) -> Enqueued:
    refused = list(getattr(report, "refused", []) or [])
    refused_positions = {getattr(r, "position", None) for r in refused}
    accepted_ids = [doc_id for position, doc_id in enumerate(ids) if position not in refused_positions]
    if refused and not accepted_ids:
        first = refused[0]
        raise HTTPException(
            422,
            f"every document was refused, nothing was enqueued; first: {getattr(first, 'id', None)!r}: "
            f"{getattr(first, 'reason', first)}",
        )
    result = report.model_dump(mode="json") if isinstance(report, BaseModel) else report
    return Enqueued(
        operation=operation,
        accepted=int(getattr(report, "accepted", len(accepted_ids))),
        ids=accepted_ids,
        refused=[r.model_dump(mode="json", exclude={"document"}) for r in refused if isinstance(r, BaseModel)],
        result=result if isinstance(result, dict) else None,
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("clipfuse")
    except Exception:
        return "0"
