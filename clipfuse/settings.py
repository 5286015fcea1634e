"""All configuration, from the environment (prefix ``CLIPFUSE_``, nested with ``__``).

Only the edges (CLI, Celery app, factories) read settings; the core receives
explicit objects. Example: ``CLIPFUSE_MODEL__NAME=ViT-B-16``,
``CLIPFUSE_QDRANT__URL=http://qdrant:6333``, ``CLIPFUSE_IMAGES__MAX_PIXELS=40000000``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clipfuse.errors import ConfigurationError
from clipfuse.schemas import limits as L

__all__ = [
    "BrokerSettings",
    "EdgeSettings",
    "ElasticsearchSettings",
    "ImageSettings",
    "ModelSettings",
    "QdrantSettings",
    "ServiceSettings",
    "Settings",
    "WorkerSettings",
    "get_settings",
]

#: the small CLIP shipped with clipfuse (for the demo and the tests)
DEMO_MODEL = "clipfuse-demo"


class ModelSettings(BaseModel):
    """The OpenCLIP model.

    ``name`` is any open_clip model name (``ViT-B-32``), ``hf-hub:org/repo``,
    ``local-dir:/path`` (a folder with ``open_clip_config.json`` and weights), or
    ``clipfuse-demo`` (the small model shipped in the package). ``pretrained`` is an
    open_clip tag (``laion2b_s34b_b79k``) or a path to a checkpoint file; it is
    ignored for ``hf-hub:`` / ``local-dir:`` names.
    """

    name: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:1, ...")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    batch_size: int = Field(64, ge=1, le=8192, description="images / texts per forward pass")
    cache_dir: str | None = None
    text_encoder: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="query side (search, serve): the text tower on torch, on ONNX Runtime in fp32 (same vectors, "
        "~2.5x faster for one query on a CPU) or int8 (dynamic quantisation, ~7x, cosine ~0.999 to torch); "
        "auto = onnx when onnxruntime is installed and the device is the CPU, else torch (docs/benchmarks.md)",
    )
    query_cache_size: int = Field(
        4096,
        ge=0,
        le=1_000_000,
        description="query side: text embeddings kept in an LRU cache (0: off); ~2 KiB each for a 512-d model",
    )


class ImageSettings(BaseModel):
    """Bounds on loading images (documents and query images)."""

    max_bytes: int = Field(L.DEFAULT_MAX_IMAGE_BYTES, ge=1024)
    max_pixels: int = Field(L.DEFAULT_MAX_IMAGE_PIXELS, ge=64 * 64)
    fetch_timeout_s: float = Field(L.DEFAULT_FETCH_TIMEOUT_S, gt=0, le=300)
    allow_private_urls: bool = Field(
        False, description="fetch URLs that resolve to private / loopback addresses (off: SSRF guard)"
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description='address ranges image URLs may resolve to besides the public internet, e.g. ["10.20.0.0/16"] '
        "(an internal image host), with the SSRF guard on for everything else",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"allowed_networks: {net!r} is not an address range (CIDR): {e}") from None
        return value

    load_workers: int = Field(
        8, ge=1, le=256, description="threads that read / fetch / decode / resize images while the model runs"
    )
    reduced_jpeg_decode: bool = Field(
        True,
        description="decode JPEGs at least twice the model's input at 1/2-1/8 scale (libjpeg DCT scaling): "
        "2-4x faster decoding, cosine >= 0.99 to the full decode",
    )
    device_decode: bool | None = Field(
        None,
        description="decode JPEGs on the model's device (nvjpeg on CUDA) in a batched resize / crop / normalise; "
        "what it cannot decode (PNG, WebP, progressive, CMYK) goes the CPU way in the same batch. "
        "Default: on when an OpenCLIP model runs on CUDA",
    )


class QdrantSettings(BaseModel):
    """Qdrant: a server when ``url`` is set, else the embedded store at ``path``."""

    url: str | None = None
    api_key: SecretStr | None = None
    path: Path = Path("clipfuse-data/qdrant")
    timeout_s: float = 30.0


class EdgeSettings(BaseModel):
    """Qdrant Edge, the embedded Rust engine: used when ``CLIPFUSE_BACKEND=qdrant-edge``.

    ``path`` holds one store per index (``<path>/<index>/``), open in one process at a time.
    ``hnsw_m`` / ``ef_construct`` / ``full_scan_threshold_kb`` shape the HNSW graphs built by
    ``optimize()`` (after a bulk index, or ``clipfuse optimize``) and are fixed when a store is
    created; ``ef`` and ``exact`` apply to every search. Defaults: see docs/benchmarks.md.
    """

    path: Path = Path("clipfuse-data/edge")
    hnsw_m: int = Field(default=16, ge=4, le=128, description="HNSW edges per node")
    ef_construct: int = Field(default=100, ge=8, le=4096, description="HNSW build beam width")
    ef: int = Field(default=64, ge=1, le=4096, description="HNSW search beam width")
    exact: bool = Field(default=False, description="brute-force every search (ignores the HNSW graphs)")
    full_scan_threshold_kb: int = Field(
        default=1_000,
        ge=0,
        description="filtered searches matching fewer vector KB than this scan instead of the graph",
    )


class ElasticsearchSettings(BaseModel):
    """Elasticsearch 8.15+ / 9.x: used when ``CLIPFUSE_BACKEND=elasticsearch``."""

    url: str | None = Field(None, description="https://host:9200")
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = Field(None, description="CA bundle for TLS")
    verify_certs: bool = True
    request_timeout_s: float = Field(30.0, gt=0, le=600)
    vector_index_type: Literal["int8_hnsw", "bbq_hnsw", "hnsw", "int8_flat", "flat"] = "int8_hnsw"
    server_side_fusion: bool = Field(False, description="use the rrf / linear retrievers (Enterprise licence)")
    refresh: Literal["false", "true", "wait_for"] = Field("false", description="refresh policy of bulk writes")


class BrokerSettings(BaseModel):
    """The message broker between producers and workers: Redis (default) or RabbitMQ.

    ``url``: ``redis://host:6379/0`` or ``amqp://user:password@host:5672//``. Redis emulates
    acknowledgements: a message taken by a worker sits in an "unacked" set and goes back to the
    queue when it was not acknowledged within ``visibility_timeout_s``; keep that longer than the
    slowest batch (waiting in the worker's buffer included), or messages are redelivered while
    still being processed. RabbitMQ returns unacknowledged messages as soon as the consumer's
    connection closes and ignores the visibility timeout.
    """

    url: str = Field(default="redis://127.0.0.1:6379/0", description="redis://... or amqp://user:password@host:5672//")
    queue: str = Field(default="clipfuse", min_length=1, max_length=200, description="queue the workers consume")
    visibility_timeout_s: int = Field(
        default=600, ge=5, le=43_200, description="Redis: seconds before an unacknowledged message is redelivered"
    )
    restore_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Redis: how often a worker looks for messages past the visibility timeout",
    )
    heartbeat_s: int = Field(default=120, ge=0, le=3600, description="RabbitMQ connection heartbeat (0: off)")
    confirm_publish: bool = Field(
        default=True, description="RabbitMQ: wait for the broker to confirm every message sent"
    )
    documents_per_message: int = Field(
        default=64, ge=1, le=L.MAX_DOCUMENTS_PER_MESSAGE, description="documents the producer packs into one message"
    )
    max_message_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=64 * 1024,
        le=128 * 1024 * 1024,
        description="JSON bytes of documents per message (inline images count here)",
    )


class WorkerSettings(BaseModel):
    """How a worker batches, retries and reports."""

    batch_messages: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="messages buffered before a batch is flushed (celery-batches flush_every)",
    )
    flush_interval_s: float = Field(
        default=1.0, gt=0, le=600, description="longest wait before a partial batch is flushed"
    )
    prefetch_multiplier: int = Field(
        default=2,
        ge=1,
        le=64,
        description="messages prefetched = this x batch_messages (>= 1 batch; 2 overlaps the next)",
    )
    retry_base_s: float = Field(
        default=1.0, gt=0, le=600, description="first backoff when the search engine is unavailable"
    )
    retry_max_s: float = Field(default=30.0, gt=0, le=3600, description="longest single backoff")
    retry_in_process_s: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="how long a batch waits for the engine in the worker before its messages are re-published "
        "(keep it well under the RabbitMQ heartbeat: a solo worker sends none while it waits)",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus metrics port in the worker (0: off)")
    state_url: str | None = Field(
        default=None,
        description="Redis for dead letters and counters (default: the broker URL when it is Redis, else "
        "redis://127.0.0.1:6379/0)",
    )
    dead_letter_max: int = Field(
        default=100_000, ge=1, le=10_000_000, description="dead letters kept per index (oldest go)"
    )


_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?$")


class ServiceSettings(BaseModel):
    """The HTTP search service (``clipfuse serve``).

    ``api_key`` protects the write endpoints (``POST /documents``, ``DELETE /documents/{id}``);
    without one they are refused. ``catalog_root`` is the folder whose images ``GET /images/...``
    may serve (the folder of a JSONL catalog; nothing outside it is ever served) and the only
    place a query image given as a server-side ``path`` may come from.
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(None, description="X-API-Key required by the write endpoints (unset: refused)")
    catalog_root: Path | None = Field(None, description="folder of product images served under /images/")
    max_upload_bytes: int = Field(
        6 * 1024 * 1024,
        ge=1024,
        le=L.MAX_INLINE_IMAGE_CHARS * 3 // 4,
        description="largest query image accepted by POST /search/image (and inline in POST /search)",
    )
    max_documents_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024, description="largest POST /documents body"
    )
    max_documents_per_request: int = Field(1_000, ge=1, le=100_000)
    check_broker: bool | None = Field(
        None,
        description="GET /healthz also checks the broker (ingestion through /documents); "
        "unset: only when the engine is a server (the embedded store cannot be shared with workers anyway)",
    )
    health_timeout_s: float = Field(2.0, gt=0, le=60)
    facet_sample: int = Field(2_000, ge=1, le=100_000, description="documents sampled for the UI's filter values")
    facet_max_values: int = Field(50, ge=1, le=1_000, description="values listed per keyword field")
    facet_ttl_s: float = Field(60.0, ge=0, le=86_400, description="seconds the filter values are cached")
    index_info_ttl_s: float = Field(30.0, ge=0, le=86_400, description="seconds the index's field list is cached")
    alias_check_s: float = Field(
        1.0, ge=0, le=3_600, description="how often the service checks whether the alias moved (then follows it)"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (a storefront's https://shop.example.com); "
        "none by default; '*' allows any origin, never together with credentials",
    )
    cors_allow_credentials: bool = Field(
        False, description="let browsers send cookies / HTTP auth cross-origin (not with '*'; search needs none)"
    )
    algolia_api_key: SecretStr | None = Field(
        None,
        description="search-only key the Algolia-compatible API (/1/indexes/...) requires in X-Algolia-API-Key "
        "(header or query string); unset: open, like the native search API",
    )
    algolia_app_id: str | None = Field(
        None, max_length=64, description="Application ID required in X-Algolia-Application-Id when set"
    )
    algolia_window: int = Field(
        1000,
        ge=1,
        le=L.MAX_K,
        description="ranked candidates per Algolia query: hits, pages, nbHits and facet counts come from this window",
    )
    algolia_distinct_field: str = Field(
        "group_id", min_length=1, max_length=64, description="attribute Algolia's distinct collapses on"
    )
    ui: bool = Field(True, description="serve the web search page at /")
    ui_facets: list[str] | None = Field(
        None,
        max_length=L.MAX_FACETS,
        description="fields the web page offers as facets, in this order (keyword / bool: a checklist with counts, "
        "number: a min-max range); unset: every number field, and every keyword and bool field but the collapse "
        "field, date-valued fields and fields with facet_max_values or more values",
    )
    ui_collapse_field: str | None = Field(
        "group_id",
        max_length=64,
        description="the web page shows one card per value of this keyword field (its variants as swatches) when "
        "the index has it; empty: one card per document",
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN_RE.match(origin):
                raise ValueError(
                    f"CORS origin {origin!r} is not an origin: write scheme://host[:port] with no path, "
                    "e.g. https://shop.example.com or http://localhost:3000"
                )
        return [o.rstrip("/") for o in origins]

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> ServiceSettings:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError(
                "CORS: '*' with credentials would let any site act as a logged-in user; list the storefront "
                "origins in CLIPFUSE_SERVICE__CORS_ORIGINS or turn CLIPFUSE_SERVICE__CORS_ALLOW_CREDENTIALS off"
            )
        return self


class SearchSettings(BaseModel):
    """Ranking features of searches: merchandising rules and cursors (``next_cursor``).

    ``rules_file``: JSON or YAML rules (see ``clipfuse.schemas.rules``), loaded by the CLI and
    the service; the service re-reads it when it changes (checked at most every
    ``rules_reload_s``), and a file that fails validation keeps the previous rules (logged).
    Cursors freeze a ranking for ``cursor_ttl_s``: in this process (``memory``), in Redis
    (``redis``, shared by every service instance: give them the same ``cursor_secret``, or
    leave it unset and they share one generated secret kept in that Redis), or ``auto``:
    memory for the embedded engine, Redis for a server engine. The CLI keeps cursors in the
    embedded store's folder, so ``clipfuse search --cursor`` works across invocations.
    """

    rules_file: Path | None = Field(None, description="merchandising rules file (JSON or YAML)")
    rules_reload_s: float = Field(
        2.0, ge=0, le=3600, description="the service checks the rules file for changes this often (0: never)"
    )
    cursor_store: Literal["auto", "memory", "redis", "none"] = Field("auto", description="where rankings are frozen")
    cursor_ttl_s: float = Field(600.0, gt=0, le=86_400, description="how long a cursor's ranking is kept")
    cursor_max_entries: int = Field(10_000, ge=1, le=10_000_000, description="rankings kept by the memory store")
    cursor_redis_url: str | None = Field(
        None, description="Redis for cursors (default: worker.state_url, else the broker URL when it is Redis)"
    )
    cursor_secret: SecretStr | None = Field(None, description="HMAC key that signs cursor tokens")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPFUSE_", env_nested_delimiter="__", extra="ignore")

    backend: Literal["auto", "qdrant-edge", "qdrant", "elasticsearch"] = Field(
        "auto",
        description=(
            "the engine: auto = a Qdrant server when CLIPFUSE_QDRANT__URL is set, else the embedded "
            "Qdrant Edge store; qdrant = qdrant-client (a server by URL, or its embedded local mode "
            "at CLIPFUSE_QDRANT__PATH); qdrant-edge; elasticsearch"
        ),
    )
    index: str = Field("products", min_length=1, max_length=255, description="collection / index name")
    batch_size: int = Field(64, ge=1, le=4096, description="documents per ingest batch")
    model: ModelSettings = ModelSettings()
    images: ImageSettings = ImageSettings()
    qdrant: QdrantSettings = QdrantSettings()
    edge: EdgeSettings = EdgeSettings()
    elasticsearch: ElasticsearchSettings = ElasticsearchSettings()
    log_level: str = "WARNING"
    broker: BrokerSettings = BrokerSettings()
    worker: WorkerSettings = WorkerSettings()
    service: ServiceSettings = ServiceSettings()
    search: SearchSettings = SearchSettings()

    @property
    def engine(self) -> Literal["qdrant-edge", "qdrant", "elasticsearch"]:
        """The engine ``backend`` resolves to (``auto``: a Qdrant server by URL, else embedded Edge)."""
        if self.backend != "auto":
            return self.backend
        return "qdrant" if self.qdrant.url else "qdrant-edge"

    @property
    def embedded_store(self) -> Path | None:
        """The folder of the embedded store in use, or ``None`` when the engine is a server."""
        if self.engine == "qdrant-edge":
            return Path(self.edge.path)
        if self.engine == "qdrant" and not self.qdrant.url:
            return Path(self.qdrant.path)
        return None

    def with_store(self, store: Path) -> Settings:
        """These settings with the embedded store at ``store``, whichever embedded engine is in use.

        With ``backend=auto``, a folder that already holds a qdrant-client local store
        (``meta.json``) stays on that engine, so stores built before Edge became the
        default keep working. An engine that is a server has no store folder: asking for
        one is refused (:class:`ConfigurationError`) rather than silently ignored.
        """
        if self.engine == "elasticsearch" or (self.engine == "qdrant" and self.qdrant.url):
            where = "Elasticsearch" if self.engine == "elasticsearch" else f"the Qdrant server {self.qdrant.url}"
            raise ConfigurationError(
                f"--store {store} names an embedded store folder, but the engine in use is {where}; "
                "drop --store, or unset the server's URL to use the embedded store"
            )
        update: dict[str, object] = {
            "qdrant": self.qdrant.model_copy(update={"path": store}),
            "edge": self.edge.model_copy(update={"path": store}),
        }
        if self.backend == "auto" and not self.qdrant.url and holds_qdrant_local_store(Path(store)):
            update["backend"] = "qdrant"
        return self.model_copy(update=update)


def holds_qdrant_local_store(folder: Path) -> bool:
    """Whether ``folder`` is a qdrant-client local store: it has qdrant-client's ``meta.json``, and
    either that records a collection or alias, or no Qdrant Edge shard lives beside it.

    ``QdrantClient(path=...)`` pointed at an Edge store (the default one, say) writes an empty
    ``meta.json`` there; that folder is still the Edge store it was, not an empty qdrant-client one.
    """
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    if not any(folder.glob("*.clipfuse.json")):  # no Edge shard's metadata: qdrant-client's alone
        return True
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # unreadable: as before, qdrant-client's (which then says what is wrong)
    return isinstance(recorded, dict) and bool(recorded.get("collections") or recorded.get("aliases"))


def get_settings() -> Settings:
    return Settings()
