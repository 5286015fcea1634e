"""Building clients, backends, embedders and indexers from settings (the edge).

The core never reads settings; the CLI, the Celery app and services call these.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipfuse import embedding
from clipfuse.embedding import Embedder
from clipfuse.embedding.cache import CachedQueryEmbedder
from clipfuse.errors import ConfigurationError, StoreLocked
from clipfuse.images import ImageLimits, ImageLoader
from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin.cursor import CursorCodec, FileCursorStore, MemoryCursorStore, RedisCursorStore
from clipfuse.plugin.searcher import HybridSearcher
from clipfuse.reindex.writer import AliasWriter
from clipfuse.settings import ImageSettings, ModelSettings, Settings

if TYPE_CHECKING:  # the engines' clients are optional extras, imported when a backend is built
    from qdrant_client import QdrantClient

    from clipfuse.plugin.edge import EdgeBackend
    from clipfuse.plugin.protocol import Backend

__all__ = [
    "build_backend",
    "build_edge_backend",
    "build_image_loader",
    "build_indexer",
    "build_query_embedder",
    "build_searcher",
    "build_writer",
    "embedder_for_model",
    "model_settings_for_index",
    "open_qdrant_client",
    "settings_for_existing_index",
]


def open_qdrant_client(settings: Settings) -> QdrantClient:
    """A server client when ``CLIPFUSE_QDRANT__URL`` is set, else the embedded store on disk."""
    from qdrant_client import QdrantClient

    q = settings.qdrant
    if q.url:
        return QdrantClient(
            url=q.url,
            api_key=q.api_key.get_secret_value() if q.api_key else None,
            timeout=int(q.timeout_s),
        )
    path = Path(q.path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        return QdrantClient(path=str(path))
    except RuntimeError as e:
        if "already accessed" in str(e):
            raise StoreLocked(
                f"the embedded Qdrant store at {path} is open in another process (a worker, a service or "
                "another clipfuse command); the embedded store allows one process at a time. Stop that "
                "process, or run a Qdrant server and set CLIPFUSE_QDRANT__URL for concurrent access."
            ) from e
        raise


def build_backend(settings: Settings, client: QdrantClient | None = None) -> Backend:
    """The configured engine's backend (``CLIPFUSE_BACKEND``)."""
    engine = "qdrant" if client is not None and settings.backend == "auto" else settings.engine
    if engine == "qdrant-edge":
        return build_edge_backend(settings)
    if engine == "elasticsearch":
        from clipfuse.plugin.elasticsearch import ElasticsearchBackend, open_elasticsearch_client

        es = settings.elasticsearch
        if not es.url:
            raise ConfigurationError("CLIPFUSE_BACKEND=elasticsearch needs CLIPFUSE_ELASTICSEARCH__URL")
        es_client = open_elasticsearch_client(
            es.url,
            api_key=es.api_key.get_secret_value() if es.api_key else None,
            username=es.username,
            password=es.password.get_secret_value() if es.password else None,
            ca_certs=str(es.ca_certs) if es.ca_certs else None,
            verify_certs=es.verify_certs,
            request_timeout=es.request_timeout_s,
        )
        refresh: bool | str = {"false": False, "true": True}.get(es.refresh, es.refresh)
        return ElasticsearchBackend(
            es_client,
            settings.index,
            vector_index_type=es.vector_index_type,
            server_side_fusion=es.server_side_fusion,
            refresh=refresh,
        )
    from clipfuse.plugin.qdrant import QdrantBackend

    return QdrantBackend(client or open_qdrant_client(settings), settings.index)


def build_edge_backend(settings: Settings) -> EdgeBackend:
    """The embedded Qdrant Edge store at ``CLIPFUSE_EDGE__PATH`` (one process at a time)."""
    from clipfuse.plugin.edge import EdgeBackend

    edge = settings.edge
    return EdgeBackend(
        edge.path,
        settings.index,
        hnsw_m=edge.hnsw_m,
        ef_construct=edge.ef_construct,
        ef=edge.ef,
        exact=edge.exact,
        full_scan_threshold_kb=edge.full_scan_threshold_kb,
    )


def build_image_loader(settings: ImageSettings, *, base_dir: Path | None = None) -> ImageLoader:
    return ImageLoader(
        ImageLimits(
            max_bytes=settings.max_bytes,
            max_pixels=settings.max_pixels,
            fetch_timeout_s=settings.fetch_timeout_s,
            allow_private_urls=settings.allow_private_urls,
            allowed_networks=tuple(settings.allowed_networks),
        ),
        base_dir=base_dir,
    )


def build_embedder(settings: ModelSettings) -> Embedder:
    return embedding.build_embedder(settings)


def resolve_text_encoder(settings: ModelSettings) -> str:
    """``torch``, ``onnx`` or ``onnx-int8`` for ``settings.text_encoder`` (``auto``: onnx when
    onnxruntime is installed and the model runs on the CPU)."""
    choice = settings.text_encoder
    if choice != "auto":
        return choice
    if settings.device not in ("cpu", "auto"):
        return "torch"
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return "torch"
    if settings.device == "auto":
        import torch

        if torch.cuda.is_available():
            return "torch"
    return "onnx"


def build_query_embedder(settings: ModelSettings) -> Embedder:
    """The embedder of the query side (``clipfuse serve``, ``search``): the text tower on the
    chosen encoder, behind an LRU cache of query embeddings (``CLIPFUSE_MODEL__QUERY_CACHE_SIZE``)."""
    embedder = build_embedder(settings)
    encoder = resolve_text_encoder(settings)
    if encoder != "torch":
        from clipfuse.embedding.onnx_text import OnnxTextEmbedder
        from clipfuse.embedding.openclip import OpenClipEmbedder

        if not isinstance(embedder, OpenClipEmbedder):
            raise ConfigurationError(f"text_encoder={encoder} needs an OpenCLIP model")
        cache = Path(settings.cache_dir) / "onnx" if settings.cache_dir else _user_cache() / "onnx"
        embedder = OnnxTextEmbedder(
            embedder, quantization="int8" if encoder == "onnx-int8" else "fp32", cache_dir=cache
        )
    if settings.query_cache_size == 0:
        return embedder
    return CachedQueryEmbedder(embedder, size=settings.query_cache_size)


def _user_cache() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clipfuse"


def build_indexer(
    settings: Settings,
    *,
    backend: Backend | None = None,
    embedder: Embedder | None = None,
    base_dir: Path | None = None,
) -> Indexer:
    return Indexer(
        embedder or build_embedder(settings.model),
        backend or build_backend(settings),
        loader=build_image_loader(settings.images, base_dir=base_dir),
        batch_size=settings.batch_size,
        load_workers=settings.images.load_workers,
        reduced_jpeg_decode=settings.images.reduced_jpeg_decode,
        device_decode=settings.images.device_decode,
    )


def embedder_for_model(settings: Settings, model_id: str | None, cache: dict[str, Embedder]) -> Embedder:
    """The embedder of a recorded model (``None``: the configured one), one per model id in ``cache``."""
    if model_id is not None and model_id in cache:
        return cache[model_id]
    model = model_settings_for_index(settings, model_id, explicit=False) if model_id else settings.model
    embedder = build_embedder(model)  # construction loads nothing
    return cache.setdefault(embedder.model_id, embedder)


def build_writer(
    settings: Settings,
    *,
    base_dir: Path | None = None,
    embedders: dict[str, Embedder] | None = None,
    explicit: bool = False,
    root: Backend | None = None,
) -> AliasWriter:
    """What writes through ``CLIPFUSE_INDEX``: every live index of its alias, each with its own model.

    A fresh name is created as ``<index>--<model>-<hash>`` behind an alias ``<index>``.
    ``embedders``: a cache of loaded models by id (a worker keeps one for its life).
    ``explicit``: the configured model was chosen by the user; the target must have it.
    """
    cache: dict[str, Embedder] = embedders if embedders is not None else {}
    default = embedder_for_model(settings, None, cache)

    def indexer_for(backend: Backend, model_id: str | None) -> Indexer:
        return build_indexer(
            settings, backend=backend, embedder=embedder_for_model(settings, model_id, cache), base_dir=base_dir
        )

    return AliasWriter(
        root or build_backend(settings),
        settings.index,
        indexer_for=indexer_for,
        default_model=default.model_id,
        explicit_model=default.model_id if explicit else None,
    )


def model_settings_for_index(settings: Settings, recorded_model: str | None, *, explicit: bool) -> ModelSettings:
    """Use the model recorded in the index unless the user chose one explicitly."""
    if explicit or not recorded_model:
        return settings.model
    name, pretrained = embedding.split_model_id(recorded_model)
    return settings.model.model_copy(update={"name": name, "pretrained": pretrained})


def settings_for_existing_index(settings: Settings, *, explicit: bool) -> Settings:
    """``settings`` with the model the index records, when the index exists and no model was chosen.

    What ``clipfuse index`` and ``clipfuse search`` do before loading a model: an existing index
    was built with one model, and only that model's vectors can be added to it or searched in
    it. With ``explicit`` (``--model`` or ``CLIPFUSE_MODEL__NAME``) the choice stands, and a
    mismatch is refused later by the backend.
    """
    if explicit:
        return settings
    backend = build_backend(settings)
    try:
        info = backend.index_info()
    finally:
        backend.close()
    if info is None or not info.model:
        return settings
    return settings.model_copy(update={"model": model_settings_for_index(settings, info.model, explicit=False)})


def build_searcher(
    settings: Settings,
    *,
    backend: Backend | None = None,
    embedder: Embedder | None = None,
    cursor_dir: Path | None = None,
) -> HybridSearcher:
    """A searcher from settings: the engine, the query model, the rules file, the cursor store.

    ``cursor_dir``: keep cursors in files there (the CLI, see :func:`build_cursors`).
    """
    return HybridSearcher(
        backend or build_backend(settings),
        embedder=embedder or build_query_embedder(settings.model),
        image_loader=build_image_loader(settings.images),
        rules=settings.search.rules_file,
        cursors=build_cursors(settings, directory=cursor_dir),
    )


def build_cursors(settings: Settings, *, directory: Path | None = None) -> CursorCodec | None:
    """Where searches freeze rankings for ``next_cursor``: see :class:`clipfuse.settings.SearchSettings`.

    ``directory``: keep them in files there (the CLI, whose every command is a new process).
    """
    conf = settings.search
    secret = conf.cursor_secret.get_secret_value() if conf.cursor_secret is not None else None
    kind = conf.cursor_store
    if kind == "none":
        return None
    if directory is not None and kind in ("auto", "memory"):
        files = FileCursorStore(directory, max_entries=conf.cursor_max_entries)
        return CursorCodec(files, secret=secret or files.secret(), ttl_s=conf.cursor_ttl_s)
    if kind == "auto":
        kind = "memory" if settings.embedded_store is not None else "redis"
    if kind == "memory":
        return CursorCodec(MemoryCursorStore(conf.cursor_max_entries), secret=secret, ttl_s=conf.cursor_ttl_s)
    import redis

    url = conf.cursor_redis_url or settings.worker.state_url
    if url is None:
        broker = settings.broker.url
        url = broker if broker.startswith(("redis://", "rediss://")) else "redis://127.0.0.1:6379/0"
    store = RedisCursorStore(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))
    try:
        key = secret or store.secret()
    except redis.RedisError as e:
        raise ConfigurationError(
            f"cannot reach Redis for cursors at {url.split('@')[-1]}: {e}; set CLIPFUSE_SEARCH__CURSOR_REDIS_URL, "
            "or CLIPFUSE_SEARCH__CURSOR_STORE=memory (one service instance) / none"
        ) from None
    return CursorCodec(store, secret=key, ttl_s=conf.cursor_ttl_s)
