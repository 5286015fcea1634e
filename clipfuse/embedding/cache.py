"""An LRU cache of query text embeddings, as an embedder wrapper (issue 16).

Shop queries repeat heavily ("black dress", "sneakers"), and a text embedding is a pure
function of the model and the text, so a search service keeps the last ``size`` of them.
The key is (model fingerprint, normalised text); the normalisation is the one CLIP's tokenizer
applies anyway (lower case, runs of whitespace collapsed, ends stripped), so a hit returns
exactly the vector the model would compute. Memory is bounded: ``size`` x ``dim`` x 4 bytes
(4,096 x 512-d = 8 MiB), plus the keys (queries are at most ``MAX_QUERY_CHARS`` long).

Images pass through uncached (a query photo rarely repeats byte for byte).

>>> embedder = CachedQueryEmbedder(OpenClipEmbedder("ViT-B-32"), size=4096)
>>> searcher = HybridSearcher(client, collection="products", embedder=embedder)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipfuse.embedding import Embedder, PreparingEmbedder
from clipfuse.errors import ConfigurationError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["CacheStats", "CachedQueryEmbedder", "normalise_query_text"]


def normalise_query_text(text: str) -> str:
    """What CLIP's tokenizer does before splitting: lower case, whitespace runs to one space."""
    return " ".join(text.split()).lower()


@dataclass(frozen=True)
class CacheStats:
    size: int
    capacity: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class CachedQueryEmbedder:
    """Wraps an embedder; ``embed_texts`` answers repeated texts from an LRU cache.

    Thread-safe. ``size=0`` disables caching (every call goes to the wrapped embedder).
    ``fingerprint``: what identifies the weights in the key (default: the wrapped embedder's
    ``fingerprint`` attribute when it has one, else its ``model_id``).
    """

    def __init__(self, inner: Embedder, *, size: int = 4096, fingerprint: str | None = None) -> None:
        if size < 0:
            raise ConfigurationError(f"query cache size must be >= 0, got {size}")
        self.inner = inner
        self.capacity = size
        self._fingerprint = fingerprint
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    # -- the Embedder protocol, delegated ---------------------------------------------
    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def draft_size(self) -> int | None:
        return self.inner.draft_size if isinstance(self.inner, PreparingEmbedder) else None

    def prepare_image(self, image: Image) -> object:
        if not isinstance(self.inner, PreparingEmbedder):
            raise ConfigurationError(f"{type(self.inner).__name__} has no prepare_image")
        return self.inner.prepare_image(image)

    def embed_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        if not isinstance(self.inner, PreparingEmbedder):
            raise ConfigurationError(f"{type(self.inner).__name__} has no embed_prepared")
        return self.inner.embed_prepared(prepared)

    def embed_images(self, images: Sequence[Image]) -> np.ndarray:
        return self.inner.embed_images(images)

    @property
    def loaded(self) -> bool:
        return bool(getattr(self.inner, "loaded", True))

    def load(self) -> None:
        load = getattr(self.inner, "load", None)
        if callable(load):
            load()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            inner = getattr(self.inner, "fingerprint", None)
            self._fingerprint = str(inner) if inner else self.inner.model_id
        return self._fingerprint

    # -- texts ----------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.capacity == 0 or not texts:
            return self.inner.embed_texts(texts)
        fingerprint = self.fingerprint
        keys = [(fingerprint, normalise_query_text(t)) for t in texts]
        found: dict[int, np.ndarray] = {}
        with self._lock:
            for i, key in enumerate(keys):
                vector = self._entries.get(key)
                if vector is not None:
                    self._entries.move_to_end(key)
                    found[i] = vector
            self._hits += len(found)
            self._misses += len(keys) - len(found)
        missing = [i for i in range(len(texts)) if i not in found]
        if not missing:
            return np.stack([found[i] for i in range(len(texts))])
        computed = self.inner.embed_texts([texts[i] for i in missing])
        with self._lock:
            for row, i in enumerate(missing):
                vector = computed[row].copy()
                vector.setflags(write=False)  # shared between callers: nobody may change it in place
                self._entries[keys[i]] = vector
                self._entries.move_to_end(keys[i])
                found[i] = vector
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return np.stack([found[i] for i in range(len(texts))])

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self.capacity, self._hits, self._misses)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
