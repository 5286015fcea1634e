"""The CLIP text tower on ONNX Runtime, for the query path on the CPU (issue 16).

A shopper's query is a batch of one, 5-10 tokens long. On a CPU the torch text tower then
reads all of its weights for a handful of tokens (~150 MB for ViT-B-32 in fp32): the cost
is memory bandwidth, not arithmetic. ONNX Runtime with int8 dynamic quantisation of the
linear layers reads a quarter of the bytes and uses the CPU's VNNI instructions;
fp32 ONNX Runtime is offered too. Figures and the cosine to torch: docs/benchmarks.md.

The graph takes the query's token ids already trimmed to their real length (a dynamic axis),
exactly as :func:`clipfuse.embedding.openclip._encode_text_trimmed` does in torch: CLIP's
causal mask and end-token pooling make the result independent of the padding after it.

:class:`OnnxTextEmbedder` wraps an :class:`~clipfuse.embedding.openclip.OpenClipEmbedder`:
texts go through ONNX Runtime, images (and ``model_id``, ``dim``, preprocessing) through the
wrapped embedder, so an index built with torch is searched with the same model id. The
exported files are cached by model fingerprint in ``cache_dir``; exporting ViT-B-32 takes a
few seconds at service start.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from clipfuse.embedding import l2_normalize
from clipfuse.errors import ConfigurationError, EmbeddingError

if TYPE_CHECKING:
    from PIL.Image import Image

    from clipfuse.embedding.openclip import OpenClipEmbedder

__all__ = ["OnnxTextEmbedder", "Quantization", "export_text_tower"]

log = logging.getLogger(__name__)

Quantization = Literal["fp32", "int8"]


def _text_tower_module(model: Any) -> Any:
    """An ``nn.Module`` computing CLIP's text features from trimmed token ids, written with
    shape-generic ops (torch's MultiheadAttention traces its batch x heads size as a constant)."""
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import ResidualAttentionBlock

    blocks = list(model.transformer.resblocks)
    if not all(type(b) is ResidualAttentionBlock and b.attn._qkv_same_embed_dim for b in blocks):
        raise ConfigurationError("ONNX text tower: only open_clip's standard ResidualAttentionBlock is supported")
    if not model.transformer.batch_first:
        raise ConfigurationError("ONNX text tower: the text transformer must be batch-first")

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            m = self.m
            n, length = tokens.shape[0], tokens.shape[1]
            x = m.token_embedding(tokens) + m.positional_embedding[:length]
            mask = m.attn_mask[:length, :length]
            for block in m.transformer.resblocks:
                attn = block.attn
                heads = attn.num_heads
                y = block.ln_1(x)
                qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
                qkv = qkv.reshape(n, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
                q, k, v = qkv[0], qkv[1], qkv[2]
                scale = float(q.shape[-1]) ** -0.5
                weights = torch.softmax((q @ k.transpose(-2, -1)) * scale + mask, dim=-1)
                y = (weights @ v).transpose(1, 2).reshape(n, length, -1)
                x = x + block.ls_1(attn.out_proj(y))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            x = m.ln_final(x)
            x = x[torch.arange(n), tokens.argmax(dim=-1)]
            proj = m.text_projection
            return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    return TextTower().eval()


def export_text_tower(model: Any, path: Path, *, quantization: Quantization = "int8") -> Path:
    """Export ``model``'s text tower to ONNX at ``path`` (int8: dynamic quantisation of its
    MatMul weights). Needs torch, onnx and onnxruntime."""
    import torch

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ConfigurationError(
            f"the ONNX text tower needs onnxruntime and onnx: pip install 'clipfuse[onnx]' ({e})"
        ) from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _text_tower_module(model)
    sample = torch.zeros((2, 8), dtype=torch.long)
    sample[:, 0], sample[0, 5], sample[1, 7] = 1, 2, 2  # two lengths; the end token is the largest id
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32 = Path(tmp) / "text.fp32.onnx"
        import warnings

        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (sample,),
                str(fp32),
                input_names=["tokens"],
                output_names=["features"],
                dynamic_axes={"tokens": {0: "batch", 1: "length"}, "features": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        if quantization == "int8":
            out = Path(tmp) / "text.int8.onnx"
            quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
        else:
            out = fp32
        os.replace(out, path)  # atomic: a concurrent starter sees a whole file or none
    return path


class OnnxTextEmbedder:
    """Texts through ONNX Runtime, everything else through the wrapped OpenCLIP embedder.

    >>> embedder = OnnxTextEmbedder(OpenClipEmbedder("ViT-B-32"), quantization="int8")
    >>> embedder.embed_texts(["red leather ankle boots"]).shape
    (1, 512)

    ``threads``: ONNX Runtime's intra-op threads (1 suits one query per core; 0: its default).
    """

    def __init__(
        self,
        inner: OpenClipEmbedder,
        *,
        quantization: Quantization = "int8",
        cache_dir: str | Path | None = None,
        threads: int = 1,
    ) -> None:
        if quantization not in ("fp32", "int8"):
            raise ConfigurationError(f"ONNX quantization must be fp32 or int8, got {quantization!r}")
        self.inner = inner
        self.quantization: Quantization = quantization
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "clipfuse-onnx"
        self.threads = threads
        self._session: Any = None
        self._lock = threading.Lock()

    # -- the Embedder protocol, delegated ---------------------------------------------
    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def draft_size(self) -> int | None:
        return self.inner.draft_size

    @property
    def fingerprint(self) -> str:
        """The weights' fingerprint plus the text path (an int8 tower's vectors differ slightly)."""
        return f"{self.inner.fingerprint}-onnx-{self.quantization}"

    def prepare_image(self, image: Image) -> object:
        return self.inner.prepare_image(image)

    def embed_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        return self.inner.embed_prepared(prepared)

    def embed_images(self, images: Sequence[Image]) -> np.ndarray:
        return self.inner.embed_images(images)

    # -- texts ----------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._session is not None and self.inner.loaded

    def load(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
            except ImportError as e:
                raise ConfigurationError(
                    f"the ONNX text tower needs onnxruntime: pip install 'clipfuse[onnx]' ({e})"
                ) from e
            self.inner.load()
            from clipfuse.embedding.openclip import can_trim_text

            model = self.inner._model
            if not can_trim_text(model):
                raise ConfigurationError(
                    f"model {self.inner.name!r} has no standard CLIP text tower (causal mask, end-token pooling); "
                    "use the torch text encoder (CLIPFUSE_MODEL__TEXT_ENCODER=torch)"
                )
            path = self.cache_dir / f"text-{self.inner.fingerprint}-{self.quantization}.onnx"
            if not path.is_file():
                log.info("exporting the text tower of %s to %s", self.inner.model_id, path)
                export_text_tower(model, path, quantization=self.quantization)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def embed_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Embed token ids ``(n, L)`` (any ``L`` up to the context length; trimmed here)."""
        self.load()
        tokens = np.asarray(tokens, dtype=np.int64)
        length = int(tokens.argmax(axis=-1).max()) + 1
        try:
            features = self._session.run(None, {"tokens": np.ascontiguousarray(tokens[:, :length])})[0]
        except Exception as e:  # onnxruntime raises its own exception types
            raise EmbeddingError(f"ONNX text tower failed on a batch of {len(tokens)}: {e}") from e
        return l2_normalize(features)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.inner.tokenize(texts).numpy()
        lengths = tokens.argmax(axis=-1) + 1
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batch = self.inner.batch_size
        for start in range(0, len(texts), batch):
            rows = order[start : start + batch]
            out[rows] = self.embed_tokens(tokens[rows])
        return out
