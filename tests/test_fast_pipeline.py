"""The fast image path (issue 5) against open_clip's reference preprocessing.

Reference: the full-size decode (``Image.open(...).convert("RGB")``) through the model's own
open_clip transform (resize, crop, ToTensor, Normalize), then the image tower. Fast path: what
the Indexer runs: reduced-size JPEG decoding when the image is at least twice the model's input,
open_clip's geometric transforms in the loader's threads, uint8 batching and normalisation on the
device. Tolerance: cosine >= 0.99 per image (the issue's bar); without reduced decoding the two
paths differ by float rounding only.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from clipfuse.bench.images import synthetic_jpeg
from clipfuse.images import ImageLoader
from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin.protocol import IndexedDocument, IndexInfo

# (width, height): landscape, portrait, panorama, square: reduced decoding; then two small ones: full decoding
SIZES = [(800, 600), (600, 900), (1400, 500), (1000, 1000), (120, 90), (100, 260)]


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [synthetic_jpeg(w, h, seed=70 + i) for i, (w, h) in enumerate(SIZES)]


def _reference(embedder: Any, data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return embedder.embed_pixels(embedder.preprocess(image)[None])[0]


class CaptureBackend:
    """A backend that keeps what it is given."""

    lexical = "sparse"

    def __init__(self) -> None:
        self.docs: dict[str, IndexedDocument] = {}

    def ensure_schema(self, *, dim: int, model: str | None) -> None:
        pass

    def index_info(self) -> IndexInfo | None:
        return None

    def register_fields(self, fields: Mapping[str, Any]) -> None:
        pass

    def upsert(self, documents: Sequence[IndexedDocument]) -> dict[str, str]:
        self.docs.update((d.id, d) for d in documents)
        return {}


def test_reduced_decoding_triggers_only_on_large_jpegs(demo_embedder: Any, jpegs: list[bytes]) -> None:
    loader = ImageLoader()
    side = demo_embedder.draft_size
    assert side == demo_embedder.image_size == 64
    for (w, h), data in zip(SIZES, jpegs, strict=True):
        decoded = loader.decode(data, draft_size=side)
        if min(w, h) >= 2 * side:
            assert decoded.size[0] < w and decoded.size[1] < h, (w, h, decoded.size)
            assert min(decoded.size) >= side
        else:
            assert decoded.size == (w, h)
        assert decoded.mode == "RGB"


def test_fast_path_matches_reference(demo_embedder: Any, jpegs: list[bytes]) -> None:
    loader = ImageLoader()
    reference = np.stack([_reference(demo_embedder, data) for data in jpegs])
    prepared = [demo_embedder.prepare_image(loader.decode(d, draft_size=demo_embedder.draft_size)) for d in jpegs]
    fast = demo_embedder.embed_prepared(prepared)
    cosine = np.sum(fast * reference, axis=1)
    assert fast.dtype == np.float32 and np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert cosine.min() >= 0.99, cosine
    # without reduced decoding the fast path is the reference up to float rounding
    full = demo_embedder.embed_prepared([demo_embedder.prepare_image(loader.decode(d)) for d in jpegs])
    assert np.sum(full * reference, axis=1).min() >= 0.99999
    # and the small images (not reduced) match exactly either way
    small = [i for i, (w, h) in enumerate(SIZES) if min(w, h) < 2 * demo_embedder.draft_size]
    assert small and np.allclose(fast[small], full[small], atol=1e-6)


def test_fast_path_is_numerically_the_reference_transform(demo_embedder: Any, jpegs: list[bytes]) -> None:
    image = Image.open(io.BytesIO(jpegs[0])).convert("RGB")
    reference = demo_embedder.preprocess(image)
    fast = demo_embedder._to_device([demo_embedder.prepare_image(image)])[0]
    assert fast.shape == reference.shape
    assert torch.allclose(fast, reference, atol=1e-5)


def test_indexer_uses_the_fast_path(demo_embedder: Any, jpegs: list[bytes]) -> None:
    backend = CaptureBackend()
    indexer = Indexer(demo_embedder, backend, batch_size=4, load_workers=3)  # type: ignore[arg-type]
    docs: list[dict[str, Any]] = [
        {"id": f"d{i}", "images": [{"data": base64.b64encode(d).decode()}], "title": "striped shirt"}
        for i, d in enumerate(jpegs)
    ]
    docs.insert(2, {"id": "corrupt", "images": [{"data": base64.b64encode(b"\xff\xd8\xff\xe0 broken").decode()}]})
    report = indexer.index(docs)
    indexer.close()
    assert report.indexed == len(jpegs)
    assert [r.id for r in report.rejected] == ["corrupt"] and report.rejected[0].stage == "load"
    assert indexer.stage_totals["decode"] > 0 and indexer.stage_totals["preprocess"] > 0
    loader = ImageLoader()
    for i, data in enumerate(jpegs):
        vector = backend.docs[f"d{i}"].image_vector
        assert vector is not None
        expected = demo_embedder.embed_prepared(
            [demo_embedder.prepare_image(loader.decode(data, draft_size=demo_embedder.draft_size))]
        )[0]
        assert np.allclose(vector, expected, atol=1e-5)
        assert float(np.dot(vector, _reference(demo_embedder, data))) >= 0.99


def test_reduced_decoding_can_be_switched_off(demo_embedder: Any, jpegs: list[bytes]) -> None:
    backend = CaptureBackend()
    indexer = Indexer(demo_embedder, backend, reduced_jpeg_decode=False)  # type: ignore[arg-type]
    indexer.index_batch([{"id": "a", "images": [{"data": base64.b64encode(jpegs[0]).decode()}]}])
    indexer.close()
    vector = backend.docs["a"].image_vector
    assert vector is not None
    assert float(np.dot(vector, _reference(demo_embedder, jpegs[0]))) >= 0.99999
