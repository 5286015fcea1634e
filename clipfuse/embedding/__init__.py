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

__all__ = ["RANDOM_INIT", "Embedder", "PreparingEmbedder", "build_embedder", "l2_normalize", "split_model_id"]

#: the ``pretrained`` part of a model id whose weights were not loaded from anywhere
RANDOM_INIT = "random-init"


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


def split_model_id(model_id: str) -> tuple[str, str | None]:
    """``(name, pretrained)`` of a recorded model id, the inverse of ``OpenClipEmbedder.model_id``.

    An id is ``<name>/<pretrained>`` (``ViT-B-32/laion2b_s34b_b79k``, ``ViT-B-32//ckpt/epoch_5.pt``
    for a checkpoint file, ``ViT-B-32/random-init``), or the name alone for ``hf-hub:`` /
    ``local-dir:`` models and the demo model. An open_clip name holds no ``/``, a checkpoint
    path may: the id splits at its first ``/``.
    """
    if model_id.startswith(("hf-hub:", "local-dir:")) or "/" not in model_id:
        return model_id, None
    name, pretrained = model_id.split("/", 1)
    return name, None if pretrained == RANDOM_INIT else pretrained


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
