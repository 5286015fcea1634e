"""Tests for the small demo CLIP model shipped in clipfuse/demo/model.

They load the committed artifacts through open_clip's own ``local-dir:`` loader
and check retrieval on products the model never saw in training.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import open_clip
import pytest
import torch

from clipfuse.demo import demo_model_dir, demo_model_name
from clipfuse.demo.catalog import CATEGORIES, COLORS, PATTERNS, generate_products, make_caption, render_image
from clipfuse.demo.train import HELDOUT_SEED, TRAIN_SEEDS

MODEL_DIR = demo_model_dir()
MODEL_NAME = f"local-dir:{MODEL_DIR.resolve()}"
WEIGHTS = MODEL_DIR / "open_clip_model.safetensors"
POOL = 500


@pytest.fixture(scope="module")
def loaded() -> tuple[Any, Any, Any]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    model.eval()
    return model, preprocess, tokenizer


@pytest.fixture(scope="module")
def heldout_embeddings(loaded: tuple[Any, Any, Any]) -> dict[str, torch.Tensor]:
    model, preprocess, tokenizer = loaded
    products = generate_products(POOL, HELDOUT_SEED)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    with torch.no_grad():
        pixels = torch.stack([preprocess(render_image(p, size=size)) for p in products])
        images = model.encode_image(pixels, normalize=True)
        captions = model.encode_text(tokenizer([p.caption for p in products]), normalize=True)
        titles = model.encode_text(tokenizer([p.title for p in products]), normalize=True)
    return {"images": images, "captions": captions, "titles": titles}


def _recall_at(k: int, queries: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of queries ``i`` whose target ``i`` is among the ``k`` best targets."""
    scores = queries @ targets.T
    topk = scores.topk(k, dim=1).indices
    hits = (topk == torch.arange(len(queries)).unsqueeze(1)).any(dim=1)
    return float(hits.float().mean())


def test_model_folder_layout() -> None:
    assert MODEL_DIR.name == "model" and MODEL_DIR.parent.name == "demo"
    assert demo_model_name() == MODEL_NAME
    config = json.loads((MODEL_DIR / "open_clip_config.json").read_text(encoding="utf-8"))
    assert set(config) >= {"model_cfg", "preprocess_cfg"}
    assert config["model_cfg"]["text_cfg"]["vocab_size"] == 49408
    assert WEIGHTS.is_file()
    assert (MODEL_DIR / "MODEL_CARD.md").is_file()
    metrics = json.loads((MODEL_DIR / "training_metrics.json").read_text(encoding="utf-8"))
    assert metrics["training"]["train_seeds"] == list(TRAIN_SEEDS)
    assert HELDOUT_SEED not in TRAIN_SEEDS


def test_weights_file_is_small() -> None:
    assert WEIGHTS.stat().st_size <= 20 * 1024 * 1024


def test_loads_as_fp32_clip_with_builtin_tokenizer(loaded: tuple[Any, Any, Any]) -> None:
    model, preprocess, tokenizer = loaded
    assert isinstance(model, open_clip.CLIP)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    tokens = tokenizer(["a red t-shirt with white stripes"])
    assert tokens.shape == (1, 32)
    assert preprocess is not None


def test_embeddings_are_finite_and_normalised(
    heldout_embeddings: dict[str, torch.Tensor],
) -> None:
    for name, feats in heldout_embeddings.items():
        assert feats.shape == (POOL, 128), name
        assert torch.isfinite(feats).all(), name
        assert torch.allclose(feats.norm(dim=1), torch.ones(POOL), atol=1e-4), name


def test_heldout_text_to_image_recall(heldout_embeddings: dict[str, torch.Tensor]) -> None:
    emb = heldout_embeddings
    r10 = _recall_at(10, emb["captions"], emb["images"])
    assert r10 >= 0.8, f"caption->image R@10 = {r10:.3f} on {POOL} held-out products"
    r10_title = _recall_at(10, emb["titles"], emb["images"])
    assert r10_title >= 0.8, f"title->image R@10 = {r10_title:.3f}"


def test_heldout_image_to_text_recall(heldout_embeddings: dict[str, torch.Tensor]) -> None:
    emb = heldout_embeddings
    # Captions of products with identical visible attributes are identical
    # strings; compare against unique captions so ties cannot push the own
    # caption out of the top k.
    captions = [p.caption for p in generate_products(POOL, HELDOUT_SEED)]
    unique = list(dict.fromkeys(captions))
    index = {c: i for i, c in enumerate(unique)}
    first = [captions.index(c) for c in unique]
    targets = emb["captions"][first]
    scores = emb["images"] @ targets.T
    topk = scores.topk(10, dim=1).indices
    own = torch.tensor([index[c] for c in captions]).unsqueeze(1)
    r10 = float((topk == own).any(dim=1).float().mean())
    assert r10 >= 0.8, f"image->caption R@10 = {r10:.3f}"


def test_zero_shot_attribute_accuracy(
    loaded: tuple[Any, Any, Any], heldout_embeddings: dict[str, torch.Tensor]
) -> None:
    # For each held-out image and each visible attribute, the caption with the
    # right value must outscore the captions that change only that attribute.
    model, _, tokenizer = loaded
    combos = list(itertools.product(CATEGORIES, COLORS, PATTERNS))
    with torch.no_grad():
        texts = model.encode_text(tokenizer([make_caption(*c) for c in combos]), normalize=True)
    scores = heldout_embeddings["images"] @ texts.T  # (POOL, n_combos)
    index = {c: i for i, c in enumerate(combos)}
    products = generate_products(POOL, HELDOUT_SEED)
    for axis, values in enumerate((CATEGORIES, COLORS, PATTERNS)):
        correct = 0
        for row, p in enumerate(products):
            truth = [p.category, p.color, p.pattern]
            candidates = []
            for value in values:
                variant = list(truth)
                variant[axis] = value
                candidates.append(index[(variant[0], variant[1], variant[2])])
            best = values[int(scores[row, candidates].argmax())]
            correct += best == truth[axis]
        accuracy = correct / len(products)
        assert accuracy >= 0.85, f"zero-shot accuracy on axis {axis}: {accuracy:.3f}"
