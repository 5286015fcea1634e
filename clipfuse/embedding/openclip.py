"""OpenCLIP embedder: any open_clip model, ``hf-hub:`` id, ``local-dir:`` folder or checkpoint file."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL.Image import Image

from clipfuse.embedding import l2_normalize
from clipfuse.errors import ConfigurationError, EmbeddingError

__all__ = ["OpenClipEmbedder", "resolve_model_name"]

log = logging.getLogger(__name__)

_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_model_name(name: str) -> str:
    """Map clipfuse's aliases (``clipfuse-demo``) to open_clip identifiers."""
    if name == "clipfuse-demo":
        from clipfuse.demo import demo_model_dir

        return f"local-dir:{demo_model_dir()}"
    return name


def _how_to_point_at_local_weights(name: str, pretrained: str | None) -> str:
    return (
        "This machine may not reach the model hub. Download the weights on a machine that can "
        '(e.g. `python -c "import open_clip; open_clip.create_model_and_transforms('
        f"'{name}', pretrained='{pretrained or ''}')\"` fills the Hugging Face cache), then either\n"
        "  - point at the checkpoint file: CLIPFUSE_MODEL__PRETRAINED=/path/to/open_clip_pytorch_model.bin "
        f"(with CLIPFUSE_MODEL__NAME={name}), or\n"
        "  - point at a folder holding open_clip_config.json and open_clip_model.safetensors: "
        "CLIPFUSE_MODEL__NAME=local-dir:/path/to/folder, or\n"
        "  - copy the Hugging Face cache over and set HF_HUB_OFFLINE=1 (and HF_HOME if it is not in ~/.cache)."
    )


class OpenClipEmbedder:
    """Embeds images and texts with an OpenCLIP model; loads the model once, lazily.

    Construction does no I/O; the model is loaded on first use (or :meth:`load`).
    Thread-safe for concurrent calls after loading.
    """

    def __init__(
        self,
        name: str = "ViT-B-32",
        *,
        pretrained: str | None = "laion2b_s34b_b79k",
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 64,
        cache_dir: str | None = None,
    ) -> None:
        if precision not in _PRECISIONS:
            raise ConfigurationError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.pretrained = pretrained
        self.precision = precision
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self._device_setting = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._dim: int | None = None
        self.load_seconds: float | None = None

    # -- loading -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        if self._device_setting == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self._device_setting)

    @property
    def model_id(self) -> str:
        resolved = resolve_model_name(self.name)
        if resolved.startswith(("local-dir:", "hf-hub:")):
            return self.name
        return f"{self.name}/{self.pretrained or 'random-init'}"

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            device = self.device
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ConfigurationError(
                    f"device {device} was asked for but CUDA is not available; set CLIPFUSE_MODEL__DEVICE=cpu or auto"
                )
            if device.type == "cpu" and self.precision == "fp16":
                raise ConfigurationError("fp16 is not supported on the CPU; use CLIPFUSE_MODEL__PRECISION=bf16 or fp32")
            resolved = resolve_model_name(self.name)
            pretrained = None if resolved.startswith(("local-dir:", "hf-hub:")) else self.pretrained
            if resolved.startswith("local-dir:"):
                folder = Path(resolved[len("local-dir:") :])
                if not (folder / "open_clip_config.json").is_file():
                    raise ConfigurationError(
                        f"model folder {folder} has no open_clip_config.json; a local-dir: model needs "
                        "open_clip_config.json and open_clip_model.safetensors (or open_clip_pytorch_model.bin)"
                    )
            elif pretrained is None:
                log.warning("model %s has no pretrained weights: embeddings are random", self.name)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    resolved,
                    pretrained=pretrained,
                    precision=self.precision,
                    device=device,
                    cache_dir=self.cache_dir,
                )
                tokenizer = open_clip.get_tokenizer(resolved, cache_dir=self.cache_dir)
            except RuntimeError as e:
                if "not found in built-ins" in str(e):
                    raise ConfigurationError(
                        f"unknown model {self.name!r}: use an open_clip name (see open_clip.list_models()), "
                        "hf-hub:org/repo, local-dir:/path, or clipfuse-demo"
                    ) from e
                raise ConfigurationError(
                    f"could not load weights for model {self.name!r} (pretrained={self.pretrained!r}): {e}\n"
                    + _how_to_point_at_local_weights(self.name, self.pretrained)
                ) from e
            except (OSError, ValueError) as e:
                raise ConfigurationError(
                    f"could not load model {self.name!r} (pretrained={self.pretrained!r}): {e}\n"
                    + _how_to_point_at_local_weights(self.name, self.pretrained)
                ) from e
            model.eval()
            self._preprocess = preprocess
            self._tokenizer = tokenizer
            self._dim = int(_embed_dim(model, resolved))
            self._model = model
            self.load_seconds = time.perf_counter() - started
            log.info("loaded %s on %s in %.1fs (dim %d)", self.model_id, device, self.load_seconds, self._dim)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.load()
        assert self._dim is not None
        return self._dim

    @property
    def image_size(self) -> int:
        """The square input size of the image tower."""
        self.load()
        size = self._model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def preprocess(self, image: Image) -> torch.Tensor:
        """The reference preprocessing of one image (resize, crop, normalise) as a CHW tensor."""
        self.load()
        return self._preprocess(image)

    # -- embedding -----------------------------------------------------------------
    def embed_images(self, images: Sequence[Image]) -> np.ndarray:
        self.load()
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            try:
                pixels = torch.stack([self._preprocess(img) for img in chunk])
            except Exception as e:  # a broken image must not hide behind a generic crash
                raise EmbeddingError(f"could not preprocess an image: {e}") from e
            out.append(self.embed_pixels(pixels))
        return np.concatenate(out)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed batch ``(n, 3, H, W)``."""
        self.load()
        dtype = _PRECISIONS[self.precision]
        try:
            features = self._model.encode_image(pixels.to(self.device, dtype=dtype, non_blocking=True))
        except RuntimeError as e:
            raise EmbeddingError(f"image tower failed on a batch of {len(pixels)}: {e}") from e
        return l2_normalize(features.float().cpu().numpy())

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            tokens = self._tokenizer(chunk).to(self.device)
            try:
                features = self._model.encode_text(tokens)
            except RuntimeError as e:
                raise EmbeddingError(f"text tower failed on a batch of {len(chunk)}: {e}") from e
            out.append(l2_normalize(features.float().cpu().numpy()))
        return np.concatenate(out)


def _embed_dim(model: Any, resolved: str) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    if resolved.startswith("local-dir:"):
        cfg = json.loads((Path(resolved[len("local-dir:") :]) / "open_clip_config.json").read_text())
        return int(cfg["model_cfg"]["embed_dim"])
    config = open_clip.get_model_config(resolved)
    if config is None:
        raise ConfigurationError(f"cannot tell the embedding size of {resolved}")
    return int(config["embed_dim"])
