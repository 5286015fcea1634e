"""OpenCLIP embedder: any open_clip model, ``hf-hub:`` id, ``local-dir:`` folder or checkpoint file.

The image path is split in two so that decoding never waits for the model (issue 5):
:meth:`OpenClipEmbedder.prepare_image` runs open_clip's own geometric transforms (resize,
crop, mode) on one PIL image and returns ``uint8`` pixels; it is thread-safe and runs in the
loader's pool. :meth:`OpenClipEmbedder.embed_prepared` stacks a batch, moves it to the
device as ``uint8`` (pinned, non-blocking on CUDA: 4x fewer bytes than float), converts and
normalises it there in one batched operation, and runs the image tower. The result equals
open_clip's reference transform up to float rounding; :meth:`embed_images` uses the same path.
Texts are embedded in batches sorted by length, each trimmed to its longest caption: exact
for CLIP's causal text tower (padding after the end token cannot change it).
"""

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
from torchvision.transforms import Normalize, ToTensor

from clipfuse.embedding import RANDOM_INIT, l2_normalize
from clipfuse.errors import ConfigurationError, EmbeddingError

__all__ = ["OpenClipEmbedder", "Prepared", "model_fingerprint", "resolve_model_name"]

log = logging.getLogger(__name__)

_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: a prepared image: ``uint8`` HWC pixels (fast path) or open_clip's float CHW tensor (fallback)
Prepared = np.ndarray | torch.Tensor


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
        self._geometric: list[Any] | None = None  # open_clip's PIL transforms before ToTensor
        self._mean: torch.Tensor | None = None
        self._std: torch.Tensor | None = None
        self._trim_text = False
        self._fingerprint: str | None = None
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
        return f"{self.name}/{self.pretrained or RANDOM_INIT}"  # split back by clipfuse.embedding.split_model_id

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the loaded weights: what identifies this model's vectors
        (``model_id`` names it; random-init models of one name differ here)."""
        self.load()
        if self._fingerprint is None:
            with self._lock:
                if self._fingerprint is None:
                    self._fingerprint = model_fingerprint(self._model)
        return self._fingerprint

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
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)  # the patch conv prefers NHWC on tensor cores
            self._split_preprocess(preprocess, device)
            self._trim_text = can_trim_text(model)
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

    def _split_preprocess(self, preprocess: Any, device: torch.device) -> None:
        """Find open_clip's PIL-only transforms and its final ToTensor + Normalize.

        When the pipeline ends with ``ToTensor, Normalize`` (every open_clip model does), the
        transforms before them run per image in the loader's threads and the last two run
        batched on the device. Anything else keeps the reference transform per image.
        """
        steps = list(getattr(preprocess, "transforms", []))
        if (
            len(steps) >= 2
            and isinstance(steps[-1], Normalize)
            and isinstance(steps[-2], ToTensor)  # open_clip's MaybeToTensor is a ToTensor
            and not any(isinstance(t, (ToTensor, Normalize, torch.nn.Sequential)) for t in steps[:-2])
        ):
            normalize = steps[-1]
            self._geometric = steps[:-2]
            self._mean = torch.tensor(normalize.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
            self._std = torch.tensor(normalize.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        else:
            log.info("preprocessing of %s is not resize/crop + normalize: per-image reference transform", self.name)
            self._geometric = None

    @property
    def draft_size(self) -> int | None:
        """The smallest side a JPEG may be reduced to while decoding without changing the result
        beyond the stated tolerance: the model's input size (``None``: no reduced decoding)."""
        return self.image_size if self._geometric is not None else None

    def preprocess(self, image: Image) -> torch.Tensor:
        """The reference preprocessing of one image (resize, crop, normalise) as a CHW tensor."""
        self.load()
        return self._preprocess(image)

    def prepare_image(self, image: Image) -> Prepared:
        """The per-image part of preprocessing (thread-safe, for the loader's pool): ``uint8`` HWC
        pixels after open_clip's own resize / crop / mode transforms."""
        self.load()
        if self._geometric is None:
            return self._preprocess(image)
        for step in self._geometric:
            image = step(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)

    # -- embedding -----------------------------------------------------------------
    def embed_images(self, images: Sequence[Image]) -> np.ndarray:
        self.load()
        try:
            prepared = [self.prepare_image(img) for img in images]
        except Exception as e:  # a broken image must not hide behind a generic crash
            raise EmbeddingError(f"could not preprocess an image: {e}") from e
        return self.embed_prepared(prepared)

    def embed_prepared(self, prepared: Sequence[Prepared]) -> np.ndarray:
        """Embed images returned by :meth:`prepare_image`, in batches of ``batch_size``."""
        self.load()
        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            try:
                pixels = self._to_device(chunk)
            except (RuntimeError, ValueError, TypeError) as e:
                raise EmbeddingError(f"could not batch {len(chunk)} prepared images: {e}") from e
            out.append(self.embed_pixels(pixels))
        return np.concatenate(out)

    @torch.inference_mode()
    def _to_device(self, chunk: Sequence[Prepared]) -> torch.Tensor:
        """Stack, copy to the device as uint8, convert and normalise there: one op per batch."""
        device = self.device
        if all(isinstance(p, np.ndarray) for p in chunk):
            host = torch.from_numpy(np.stack(chunk))  # (n, H, W, 3) uint8
            if device.type == "cuda":
                host = host.pin_memory()
            pixels = host.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
            assert self._mean is not None and self._std is not None
            pixels = (pixels - self._mean) / self._std
        else:  # reference float tensors (or a mix, when a model's transforms changed mid-way: not expected)
            pixels = torch.stack([self._as_reference(p) for p in chunk])
            if device.type == "cuda":
                pixels = pixels.pin_memory()
            pixels = pixels.to(device, non_blocking=True)
        if device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def _as_reference(self, prepared: Prepared) -> torch.Tensor:
        if isinstance(prepared, torch.Tensor):
            return prepared
        assert self._mean is not None and self._std is not None
        pixels = torch.from_numpy(np.ascontiguousarray(prepared)).permute(2, 0, 1).float()[None]
        return ((pixels - self._mean.cpu()) / self._std.cpu())[0]

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

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        self.load()
        return self._tokenizer(list(texts))

    @torch.inference_mode()
    def embed_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Embed one batch of token ids ``(n, context_length)`` (trimmed to its longest text when exact)."""
        self.load()
        tokens = tokens.to(self.device, non_blocking=True)
        try:
            features = _encode_text_trimmed(self._model, tokens) if self._trim_text else self._model.encode_text(tokens)
        except RuntimeError as e:
            raise EmbeddingError(f"text tower failed on a batch of {len(tokens)}: {e}") from e
        return l2_normalize(features.float().cpu().numpy())

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenize(texts)
        # batches of similar length waste less compute on padding (results do not depend on batching)
        order = np.argsort(-_token_lengths(tokens), kind="stable") if self._trim_text else np.arange(len(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self.embed_tokens(tokens[torch.from_numpy(rows)])
        return out


def model_fingerprint(model: Any) -> str:
    """sha256 (16 hex digits) of a torch model's parameters and buffers, in order."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def can_trim_text(model: Any) -> bool:
    """True for open_clip's CLIP text tower with a causal mask and end-token pooling, where the
    positions after the last end token cannot change the pooled feature."""
    return (
        type(model) is open_clip.model.CLIP
        and getattr(model, "text_pool_type", None) == "argmax"
        and isinstance(getattr(model, "attn_mask", None), torch.Tensor)
        and model.attn_mask.dim() == 2
        and torch.equal(torch.isinf(model.attn_mask), torch.ones_like(model.attn_mask, dtype=torch.bool).triu(1))
    )


def _token_lengths(tokens: torch.Tensor) -> np.ndarray:
    """Length up to and including the end token (the largest id, which CLIP's argmax pooling reads)."""
    return (tokens.argmax(dim=-1) + 1).numpy()


def _encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``CLIP.encode_text`` on the first ``L`` positions, ``L`` the batch's longest text."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
    return x


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
