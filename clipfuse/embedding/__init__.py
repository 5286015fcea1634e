"""The embedder protocol (no torch import here) and a registry of implementations.

An embedder maps images and texts into one vector space; outputs are
L2-normalised ``float32`` arrays of shape ``(n, dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image

    from clipfuse.settings import ModelSettings

__all__ = ["Embedder", "PreparingEmbedder", "build_embedder", "l2_normalize"]


@runtime_checkable
class Embedder(Protocol):
    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str:
        """A stable name of the model and weights, recorded in the index."""
        ...

    def embed_images(self, images: Sequence[Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class PreparingEmbedder(Embedder, Protocol):
    """An embedder whose image preprocessing splits into a per-image part (thread-safe, run in
    the loader's pool next to decoding) and a batched part on the device (issue 5's fast path).

    ``draft_size``: the side a JPEG may be reduced to while decoding (``None``: full decode).
    """

    @property
    def draft_size(self) -> int | None: ...

    def prepare_image(self, image: Image) -> object: ...

    def embed_prepared(self, prepared: Sequence[object]) -> np.ndarray: ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def build_embedder(settings: ModelSettings) -> Embedder:
    """The OpenCLIP embedder from settings (imports torch)."""
    from clipfuse.embedding.openclip import OpenClipEmbedder

    return OpenClipEmbedder(
        settings.name,
        pretrained=settings.pretrained,
        device=settings.device,
        precision=settings.precision,
        batch_size=settings.batch_size,
        cache_dir=settings.cache_dir,
    )
