"""Train the small demo CLIP model on the synthetic catalog (CPU, a few minutes).

Usage::

    python -m clipfuse.demo.train --out clipfuse/demo/model

The result is an open_clip ``local-dir:`` model folder::

    open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}
    open_clip_model.safetensors  float16 weights (loaded into an fp32 model)
    training_metrics.json        hyper-parameters, timings, held-out retrieval figures
    MODEL_CARD.md                human-readable summary

and loads with ``open_clip.create_model_and_transforms("local-dir:<folder>")`` and
``open_clip.get_tokenizer("local-dir:<folder>")``.

Training is contrastive (a multi-positive InfoNCE that equals open_clip's
``ClipLoss`` when every text names the full look, learnable logit scale) on
products from :func:`clipfuse.demo.catalog.generate_products` with the seeds in
:data:`TRAIN_SEEDS`, rendered in memory by
:func:`clipfuse.demo.catalog.render_image`.  Evaluation uses products from
:data:`HELDOUT_SEED`, which training never sees.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import platform
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import save_file

from clipfuse.demo import demo_model_dir
from clipfuse.demo.catalog import (
    CATEGORIES,
    COLORS,
    PATTERNS,
    Product,
    generate_products,
    render_image,
)

MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 64,
        "patch_size": 16,  # 4 x 4 patches
        "width": 192,
        "head_width": 48,  # 4 heads
        "layers": 4,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,  # open_clip's built-in CLIP BPE tokenizer
        "width": 128,
        "heads": 4,
        "layers": 3,
    },
}
"""open_clip ``CLIP`` model config of the demo model."""

PREPROCESS_CFG: dict[str, Any] = {
    "size": 64,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}
"""Image preprocessing (open_clip ``PreprocessCfg``) stored with the model."""

TRAIN_SEEDS: tuple[int, ...] = tuple(range(100, 140))
"""Catalog seeds whose products are used for training."""

HELDOUT_SEED: int = 999
"""Catalog seed used only for evaluation (never seen in training)."""

PRODUCTS_PER_SEED: int = 2000
WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
METRICS_FILE = "training_metrics.json"
MODEL_CARD_FILE = "MODEL_CARD.md"

_PATTERN_NOUNS = {"solid": "solid", "striped": "stripes", "dotted": "dots", "checked": "checks"}


# ---------------------------------------------------------------------------- data


def combo(product: Product) -> tuple[str, str, str]:
    """The visible attributes of a product (what its image shows)."""
    return (product.category, product.color, product.pattern)


PARTIAL_SHARE: float = 0.25
"""Default share of training texts that name only some of the visible attributes."""

Named = tuple[str | None, str | None, str | None]
"""The (category, colour, pattern) a text names; ``None`` where it says nothing."""

_PARTIAL_KINDS: tuple[tuple[str, float], ...] = (
    ("category", 0.25),
    ("color_category", 0.30),
    ("pattern_category", 0.25),
    ("color_pattern", 0.20),
)
"""Kinds of partial-attribute texts and their relative frequencies."""


def _pattern_phrase(pattern: str, what: str) -> str:
    """``"{what} with stripes"``-style phrase (``"plain {what}"`` for solid)."""
    return f"plain {what}" if pattern == "solid" else f"{what} with {_PATTERN_NOUNS[pattern]}"


def partial_text(product: Product, rng: random.Random) -> tuple[str, Named]:
    """A short text naming only some visible attributes of ``product``, like a shopper's query.

    One of: category only (``"sneakers"``), colour + category (``"red t-shirt"``),
    pattern + category (``"striped dress"``) or colour + pattern
    (``"red striped"``), in a few template variants.  Returns the text and the
    (category, colour, pattern) it names, ``None`` for what it leaves out.
    """
    c, col, pat = product.category, product.color, product.pattern
    kinds, weights = zip(*_PARTIAL_KINDS, strict=True)
    kind = rng.choices(kinds, weights)[0]
    if kind == "category":
        return rng.choice((c, f"a {c}", f"a photo of a {c}", f"{product.material} {c}")), (c, None, None)
    if kind == "color_category":
        return rng.choice((f"{col} {c}", f"a {col} {c}", f"{c} in {col}")), (c, col, None)
    if kind == "pattern_category":
        return rng.choice((f"{pat} {c}", f"a {pat} {c}", _pattern_phrase(pat, c))), (c, None, pat)
    return rng.choice((f"{col} {pat}", f"{pat} {col}", _pattern_phrase(pat, col))), (None, col, pat)


def training_text(product: Product, rng: random.Random, partial_share: float = PARTIAL_SHARE) -> tuple[str, Named]:
    """A text for ``product`` and the (category, colour, pattern) it names.

    With probability ``partial_share`` a short partial-attribute text
    (:func:`partial_text`); otherwise mostly its caption or title, sometimes a
    variant, all of which name category, colour and pattern, so they describe
    the image exactly (material and brand are noise the model learns to ignore).
    """
    if rng.random() < partial_share:
        return partial_text(product, rng)
    full = combo(product)
    r = rng.random()
    if r < 0.4:
        return product.caption, full
    if r < 0.7:
        return product.title, full
    if r < 0.8:
        return product.description, full
    c, col, pat = full
    templates = (
        f"{col} {pat} {c}",
        f"{pat} {col} {c}",
        f"{c}, {col}, {pat}",
        f"{col} {c} {_PATTERN_NOUNS[pat]}",
        f"a photo of a {col} {pat} {c}",
        f"{product.material} {c} in {col}, {pat}",
    )
    return rng.choice(templates), full


def consistent(named: Named, look: tuple[str, str, str]) -> bool:
    """Whether a text naming ``named`` describes an image showing ``look``."""
    return all(n is None or n == v for n, v in zip(named, look, strict=True))


def match_matrix(named: Sequence[Named], looks: Sequence[tuple[str, str, str]]) -> torch.Tensor:
    """``(len(named), len(looks))`` bool matrix: text ``i`` is consistent with image ``j``."""
    return torch.tensor([[consistent(n, look) for look in looks] for n in named], dtype=torch.bool)


def multi_positive_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    match: torch.Tensor,
) -> torch.Tensor:
    """Symmetric contrastive loss with several positives per row.

    ``match[i, j]`` says text ``i`` is consistent with image ``j``.  The target
    distribution of text ``i`` is uniform over its consistent images, that of
    image ``j`` uniform over its consistent texts; the loss is the mean of the
    two soft cross-entropies.  With one positive per row and column (the
    identity, as with full texts on a batch of distinct looks) it equals
    ``open_clip.ClipLoss``.
    """
    logits_per_text = logit_scale * text_features @ image_features.T
    target = match.to(logits_per_text.dtype)
    t2i = -(target / target.sum(1, keepdim=True) * logits_per_text.log_softmax(1)).sum(1).mean()
    target_t = target.T
    i2t = -(target_t / target_t.sum(1, keepdim=True) * logits_per_text.T.log_softmax(1)).sum(1).mean()
    return (t2i + i2t) / 2


GRID_SHAPES: tuple[tuple[int, int, int], ...] = ((8, 4, 4), (8, 8, 2), (4, 8, 4), (4, 10, 3))
"""(categories, colours, patterns) sub-grids that training batches are drawn from."""


def grid_batches(
    products: Sequence[Product],
    n_batches: int,
    rng: random.Random,
    shapes: Sequence[tuple[int, int, int]] = GRID_SHAPES,
) -> list[list[Product]]:
    """Contrastive batches that are full sub-grids of the visible attributes.

    Each batch picks a random subset of categories, colours and patterns (sizes
    from ``shapes``, 120-128 items) and takes one product for every combination.
    So no two items of a batch look alike (no false negatives), and every item
    meets the hardest negatives there are: products that differ from it in a
    single visible attribute.  Cells whose products have run out are skipped.
    """
    buckets: dict[tuple[str, str, str], list[Product]] = defaultdict(list)
    for product in products:
        buckets[combo(product)].append(product)
    for key in sorted(buckets):
        rng.shuffle(buckets[key])
    batches: list[list[Product]] = []
    for _ in range(n_batches):
        n_cat, n_col, n_pat = rng.choice(list(shapes))
        cells = [
            (c, col, pat)
            for c in rng.sample(CATEGORIES, n_cat)
            for col in rng.sample(COLORS, n_col)
            for pat in rng.sample(PATTERNS, n_pat)
        ]
        batch = [buckets[cell].pop() for cell in cells if buckets[cell]]
        if len(batch) < len(cells) // 2:
            raise ValueError("training pool exhausted; generate more products per seed")
        batches.append(batch)
    return batches


def render_for_training(product: Product, variant: int, rng: random.Random) -> Image.Image:
    """Render ``product`` the ways the model will meet it.

    Mostly directly at the model's input size (as the tests do), sometimes at a
    larger size (downscaled by the preprocessing) and sometimes at catalog size
    through a JPEG round trip (as :func:`write_catalog` images are).
    """
    r = rng.random()
    if r < 0.65:
        return render_image(product, size=64, seed=variant)
    if r < 0.92:
        return render_image(product, size=rng.choice((80, 96, 128)), seed=variant)
    image = render_image(product, size=256, seed=variant)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=rng.choice((75, 85, 90)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


class TokenCache:
    """Memoising wrapper around an open_clip tokenizer (texts repeat a lot)."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for text, tokens in zip(missing, self._tokenizer(missing), strict=True):
                self._cache[text] = tokens
        return torch.stack([self._cache[t] for t in texts])


# ---------------------------------------------------------------------- evaluation


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised image embeddings, shape ``(len(images), embed_dim)``."""
    model.eval()
    feats = [
        model.encode_image(  # type: ignore[operator]
            torch.stack([preprocess(im) for im in images[i : i + batch_size]]),
            normalize=True,
        )
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised text embeddings, shape ``(len(texts), embed_dim)``."""
    model.eval()
    feats = [
        model.encode_text(tokenizer(list(texts[i : i + batch_size])), normalize=True)  # type: ignore[operator]
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(feats)


def recall_at_k(
    query_feats: torch.Tensor, target_feats: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k where query ``i``'s only correct target is target ``i``.

    The rank of the correct target is ``1 + #targets scoring strictly higher``,
    so exact duplicates of the correct target (e.g. identical captions) tie in
    its favour.
    """
    scores = query_feats @ target_feats.T
    correct = scores.diagonal().unsqueeze(1)
    ranks = (scores > correct).sum(dim=1) + 1
    return {f"R@{k}": round(float((ranks <= k).float().mean()), 4) for k in ks}


PARTIAL_QUERY_TEMPLATES: dict[str, tuple[Callable[[str, str, str], str], Callable[[str, str, str], str]]] = {
    "category": (lambda c, col, pat: c, lambda c, col, pat: f"{c} for sale"),
    "color_category": (lambda c, col, pat: f"{col} {c}", lambda c, col, pat: f"{col} coloured {c}"),
    "pattern_category": (lambda c, col, pat: f"{pat} {c}", lambda c, col, pat: f"{c} with a {pat} pattern"),
    "color_pattern": (lambda c, col, pat: f"{col} {pat}", lambda c, col, pat: f"{col} and {pat}"),
}
"""Partial-attribute query kinds: (shopper phrasing, phrasing never used in training)."""

_PARTIAL_QUERY_NAMED: dict[str, Callable[[str, str, str], Named]] = {
    "category": lambda c, col, pat: (c, None, None),
    "color_category": lambda c, col, pat: (c, col, None),
    "pattern_category": lambda c, col, pat: (c, None, pat),
    "color_pattern": lambda c, col, pat: (None, col, pat),
}

EXAMPLE_QUERIES: dict[str, Named] = {
    "red t-shirt": ("t-shirt", "red", None),
    "striped dress": ("dress", None, "striped"),
    "ankle boots": ("ankle boots", None, None),
    "sneakers": ("sneakers", None, None),
    "black": (None, "black", None),
}
"""Short queries reported one by one (precision@10)."""


def precision_at_k(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    image_feats: torch.Tensor,
    looks: Sequence[tuple[str, str, str]],
    queries: Sequence[tuple[str, Named]],
    k: int = 10,
) -> list[float]:
    """Per query: share of the top ``k`` images consistent with what it names.

    The denominator is ``min(k, #consistent images in the pool)``.
    """
    text_feats = encode_texts(model, tokenizer, [q for q, _ in queries])
    relevant = match_matrix([n for _, n in queries], looks)
    top = (text_feats @ image_feats.T).topk(k, dim=1).indices
    hits = relevant.gather(1, top).sum(1).float()
    return (hits / relevant.sum(1).clamp(max=k).float()).tolist()


def partial_query_precision(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    image_feats: torch.Tensor,
    products: Sequence[Product],
    k: int = 10,
) -> dict[str, Any]:
    """Mean precision@k of text->image retrieval for partial-attribute queries.

    For each kind in :data:`PARTIAL_QUERY_TEMPLATES`, one query per distinct
    partial look present in ``products`` (e.g. every "colour category" pair), in
    the shopper phrasing (``kind``) and in a phrasing training never used
    (``kind/rephrased``); plus the :data:`EXAMPLE_QUERIES` one by one.
    """
    looks = [combo(p) for p in products]
    out: dict[str, Any] = {}
    for kind, (phrase, rephrase) in PARTIAL_QUERY_TEMPLATES.items():
        named_fn = _PARTIAL_QUERY_NAMED[kind]
        seen = dict.fromkeys(named_fn(*look) for look in looks)
        for suffix, fn in (("", phrase), ("/rephrased", rephrase)):
            queries = []
            for named in seen:
                look = next(lk for lk in looks if consistent(named, lk))
                queries.append((fn(*look), named))
            prec = precision_at_k(model, tokenizer, image_feats, looks, queries, k)
            out[f"{kind}{suffix}"] = {"P@10": round(sum(prec) / len(prec), 4), "queries": len(prec)}
    prec = precision_at_k(model, tokenizer, image_feats, looks, list(EXAMPLE_QUERIES.items()), k)
    out["examples"] = {q: round(v, 2) for q, v in zip(EXAMPLE_QUERIES, prec, strict=True)}
    return out


def evaluate(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    n: int = 1000,
    seed: int = HELDOUT_SEED,
) -> dict[str, Any]:
    """Held-out retrieval figures on ``n`` products of ``seed``.

    Two renderings are evaluated: ``direct64`` (images rendered at the model's
    input size, as the tests do) and ``catalog256`` (256 px JPEG images like the
    ones :func:`clipfuse.demo.catalog.write_catalog` writes).
    """
    products = generate_products(n, seed)
    captions = [p.caption for p in products]
    titles = [p.title for p in products]
    results: dict[str, Any] = {"seed": seed, "pool_size": n}
    for name, size, jpeg in (("direct64", 64, False), ("catalog256", 256, True)):
        images = []
        for p in products:
            im = render_image(p, size=size)
            if jpeg:
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=90)
                buf.seek(0)
                im = Image.open(buf).convert("RGB")
            images.append(im)
        img = encode_images(model, preprocess, images)
        cap = encode_texts(model, tokenizer, captions)
        tit = encode_texts(model, tokenizer, titles)
        results[name] = {
            "text_to_image_caption": recall_at_k(cap, img),
            "image_to_text_caption": recall_at_k(img, cap),
            "text_to_image_title": recall_at_k(tit, img),
            "image_to_text_title": recall_at_k(img, tit),
            "partial_queries": partial_query_precision(model, tokenizer, img, products),
        }
    return results


# ------------------------------------------------------------------------ training


def build_model() -> tuple[open_clip.CLIP, Callable[[Image.Image], torch.Tensor], Any]:
    """A fresh, randomly initialised demo model with its eval preprocessing and tokenizer."""
    model = open_clip.CLIP(**MODEL_CFG, output_dict=True)
    preprocess = image_transform_v2(PreprocessCfg(**PREPROCESS_CFG), is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])
    return model, preprocess, tokenizer


def _param_groups(model: torch.nn.Module, weight_decay: float, logit_scale_lr_mult: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay for gains, biases and embeddings; own lr multiplier for the logit scale."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    scale: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name == "logit_scale":
            scale.append(param)
        elif param.ndim < 2 or "ln" in name or "bias" in name or "embedding" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
        {"params": scale, "weight_decay": 0.0, "lr_mult": logit_scale_lr_mult},
    ]


def train(
    out_dir: Path,
    *,
    steps: int = 450,
    lr: float = 1e-3,
    logit_scale_lr_mult: float = 10.0,
    weight_decay: float = 0.1,
    warmup: int = 30,
    seed: int = 0,
    threads: int = 2,
    eval_n: int = 1000,
    log_every: int = 20,
    partial_share: float = PARTIAL_SHARE,
) -> dict[str, Any]:
    """Train the demo model and write the ``local-dir:`` folder to ``out_dir``."""
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    load_start = _load_average()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)

    model, preprocess, tokenizer = build_model()
    tokens = TokenCache(tokenizer)
    groups = _param_groups(model, weight_decay, logit_scale_lr_mult)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    pool = [p for s in TRAIN_SEEDS for p in generate_products(PRODUCTS_PER_SEED, s)]
    batches = grid_batches(pool, steps, rng)
    samples_seen = sum(len(b) for b in batches)
    print(
        f"[train] {len(pool)} training products from seeds {TRAIN_SEEDS[0]}..{TRAIN_SEEDS[-1]}, "
        f"{steps} steps, {samples_seen} samples",
        flush=True,
    )

    history: list[dict[str, float]] = []
    render_s = 0.0
    model.train()
    t_train = time.perf_counter()
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step) * group["lr_mult"]
        t0 = time.perf_counter()
        pixels = torch.stack([preprocess(render_for_training(p, step, rng)) for p in batch])
        texts, named = zip(*(training_text(p, rng, partial_share) for p in batch), strict=True)
        text = tokens(texts)
        match = match_matrix(named, [combo(p) for p in batch])
        render_s += time.perf_counter() - t0

        out = model(pixels, text)
        loss = multi_positive_clip_loss(out["image_features"], out["text_features"], out["logit_scale"], match)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

        if step % log_every == 0 or step == steps - 1:
            elapsed = time.perf_counter() - t_train
            history.append(
                {
                    "step": step,
                    "loss": round(loss.item(), 4),
                    "logit_scale": round(model.logit_scale.exp().item(), 3),
                    "lr": lr_at(step),
                    "elapsed_s": round(elapsed, 1),
                }
            )
            print(
                f"[train] step {step:4d}/{steps} loss {loss.item():.3f} "
                f"scale {model.logit_scale.exp().item():.1f} lr {lr_at(step):.2e} "
                f"{elapsed:.0f}s",
                flush=True,
            )
    train_s = time.perf_counter() - t_train

    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, out_dir)

    # Evaluate the *saved* model, loaded through open_clip's own local-dir path.
    t_eval = time.perf_counter()
    name = f"local-dir:{out_dir.resolve()}"
    loaded, _, loaded_preprocess = open_clip.create_model_and_transforms(name)
    loaded_tokenizer = open_clip.get_tokenizer(name)
    heldout = evaluate(loaded, loaded_preprocess, loaded_tokenizer, n=eval_n)
    eval_s = time.perf_counter() - t_eval
    total_s = time.perf_counter() - t_start
    cpu_s = time.process_time() - cpu_start

    metrics: dict[str, Any] = {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": PREPROCESS_CFG,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_file_bytes": (out_dir / WEIGHTS_FILE).stat().st_size,
        "training": {
            "train_seeds": list(TRAIN_SEEDS),
            "products_per_seed": PRODUCTS_PER_SEED,
            "training_pool": len(pool),
            "steps": steps,
            "batch_shapes": [list(shape) for shape in GRID_SHAPES],
            "samples_seen": samples_seen,
            "partial_text_share": partial_share,
            "partial_text_kinds": dict(_PARTIAL_KINDS),
            "loss": "multi-positive symmetric InfoNCE",
            "logit_scale_lr_mult": logit_scale_lr_mult,
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup_steps": warmup,
            "torch_seed": seed,
            "threads": threads,
            "final_loss": history[-1]["loss"],
            "final_logit_scale": history[-1]["logit_scale"],
            "history": history,
        },
        "timing_s": {
            "train_loop": round(train_s, 1),
            "of_which_rendering": round(render_s, 1),
            "evaluation": round(eval_s, 1),
            "total": round(total_s, 1),
            "process_cpu": round(cpu_s, 1),
            # 1-minute load average of the machine: wall times are only meaningful
            # if nothing else was competing for the CPU.
            "load_average_start": load_start,
            "load_average_end": _load_average(),
        },
        "heldout": heldout,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "machine": platform.machine(),
        },
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out_dir / MODEL_CARD_FILE).write_text(model_card(metrics), encoding="utf-8")
    d64 = heldout["direct64"]
    print(
        f"[train] done in {total_s:.0f}s (train loop {train_s:.0f}s); held-out "
        f"text->image R@10 {d64['text_to_image_caption']['R@10']:.3f}, "
        f"image->text R@10 {d64['image_to_text_caption']['R@10']:.3f}",
        flush=True,
    )
    return metrics


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not available on every platform
        return None


def save_model(model: torch.nn.Module, out_dir: Path) -> None:
    """Write ``open_clip_config.json`` and float16 safetensors weights."""
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / WEIGHTS_FILE).chmod(0o644)


def _fmt(r: dict[str, float]) -> str:
    return " / ".join(f"{r[k]:.3f}" for k in ("R@1", "R@5", "R@10"))


def model_card(metrics: dict[str, Any]) -> str:
    """Markdown model card from the training metrics."""
    tr = metrics["training"]
    timing = metrics["timing_s"]
    held = metrics["heldout"]
    rows = []
    for render_name, label in (
        ("direct64", "rendered at 64 px"),
        ("catalog256", "256 px JPEG (catalog files)"),
    ):
        r = held[render_name]
        rows.append(
            f"| {label} | {_fmt(r['text_to_image_caption'])} | {_fmt(r['image_to_text_caption'])} "
            f"| {_fmt(r['text_to_image_title'])} | {_fmt(r['image_to_text_title'])} |"
        )
    partial_rows = []
    kinds = (
        ("category", '"sneakers"'),
        ("color_category", '"red t-shirt"'),
        ("pattern_category", '"striped dress"'),
        ("color_pattern", '"red striped"'),
    )
    for kind, example in kinds:
        cells = [
            f"{held[r]['partial_queries'][kind]['P@10']:.3f} / "
            f"{held[r]['partial_queries'][kind + '/rephrased']['P@10']:.3f}"
            for r in ("direct64", "catalog256")
        ]
        n_queries = held["direct64"]["partial_queries"][kind]["queries"]
        label = kind.replace("_", " + ").replace("color", "colour")
        partial_rows.append(f"| {label} (e.g. {example}) | {n_queries} | {' | '.join(cells)} |")
    examples = held["direct64"]["partial_queries"]["examples"]
    example_line = ", ".join(f'"{q}" {v:.1f}' for q, v in examples.items())
    kinds_share = ", ".join(
        f"{k.replace('_', ' + ').replace('color', 'colour')} {v * 100:.0f} %"
        for k, v in tr["partial_text_kinds"].items()
    )
    size_mb = metrics["weights_file_bytes"] / 1e6
    hist = tr["history"]
    fastest = min((b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]) for a, b in itertools.pairwise(hist))
    return f"""# clipfuse demo CLIP (synthetic catalog)

A tiny [OpenCLIP](https://github.com/mlfoundations/open_clip) model trained from
scratch, on CPU, on the synthetic product catalog of `clipfuse.demo.catalog`.
It exists so that the demo, the tests and CI can run real image/text embeddings
offline without downloading weights. **It only knows the synthetic catalog**:
{len(CATEGORIES)} categories ({", ".join(CATEGORIES)}), {len(COLORS)} colours
({", ".join(COLORS)}) and {len(PATTERNS)} patterns ({", ".join(PATTERNS)}).
It is useless on real photos.

## Loading

```python
import open_clip
from clipfuse.demo import demo_model_dir

name = f"local-dir:{{demo_model_dir()}}"
model, _, preprocess = open_clip.create_model_and_transforms(name)
tokenizer = open_clip.get_tokenizer(name)  # built-in CLIP BPE, works offline
```

Weights are stored as float16 (`open_clip_model.safetensors`, {size_mb:.1f} MB) and
load into a float32 model. Embeddings are {metrics["model_cfg"]["embed_dim"]}-d.

## Architecture

open_clip `CLIP`, {metrics["parameters"] / 1e6:.2f} M parameters (most of them in the
49,408-token embedding table), config (`open_clip_config.json`):

```json
{json.dumps(metrics["model_cfg"], indent=2)}
```

Preprocessing: resize shortest side to 64 px (bicubic), centre crop 64, OpenAI CLIP
mean/std.

## Training

* Data: `generate_products({tr["products_per_seed"]}, seed)` for seeds
  {tr["train_seeds"][0]}..{tr["train_seeds"][-1]} ({tr["training_pool"]} products), images rendered in memory
  by `render_image` (65 % at 64 px, 27 % at 80-128 px, 8 % at 256 px through a
  JPEG round trip). Texts: {tr["partial_text_share"] * 100:.0f} % are *partial-attribute* texts
  naming only some visible attributes, like shoppers' queries ({kinds_share};
  e.g. "sneakers", "a red t-shirt", "dress with stripes", "red striped"); the
  rest name category, colour and pattern: caption 40 %, title 30 %, description
  10 %, short full-attribute phrases 20 %. Each batch is a full sub-grid of the visible attributes
  (e.g. all 8 categories x 4 colours x 4 patterns, one product per combination):
  no two items look alike (no false negatives) and every item meets the negatives
  that differ from it in a single attribute.
* Objective: multi-positive symmetric InfoNCE (`multi_positive_clip_loss`): a
  text's target distribution is uniform over the batch images whose look is
  consistent with the attributes it names, an image's uniform over the texts
  consistent with its look. With full texts only it is exactly CLIP InfoNCE
  (`open_clip.ClipLoss`). Learnable logit scale
  (final {tr["final_logit_scale"]:.1f}), final loss {tr["final_loss"]:.3f}.
* {tr["steps"]} steps, batches of 120-128, {tr["samples_seen"]} image/text pairs in all,
  AdamW (lr {tr["lr"]}, wd {tr["weight_decay"]}, betas 0.9/0.98), {tr["warmup_steps"]} warm-up
  steps then cosine decay; `torch.manual_seed({tr["torch_seed"]})`, {tr["threads"]} CPU threads.
* Time: {timing["train_loop"]:.0f} s training loop ({timing["of_which_rendering"]:.0f} s of it
  rendering), {timing["total"]:.0f} s in all including evaluation
  ({timing["process_cpu"]:.0f} s of CPU time), with {tr["threads"]} CPU threads. Wall time
  depends on what else runs on the machine: the fastest logged stretch ran at
  {fastest:.2f} s/step, i.e. about {fastest * tr["steps"] / 60:.0f} min for the whole loop on an
  otherwise idle {tr["threads"]}-core machine.
* Command: `python -m clipfuse.demo.train --out clipfuse/demo/model`
* Unseen seeds: every catalog seed outside {tr["train_seeds"][0]}..{tr["train_seeds"][-1]} gives products the
  model never saw (the evaluation below uses seed {held["seed"]}).

## Held-out evaluation

{held["pool_size"]} products of seed {held["seed"]} (never seen in training). Each
product's text is the query and its own image the only correct target (and vice
versa); figures are R@1 / R@5 / R@10. Products with the same visible attributes
are indistinguishable, so text->image R@1 is bounded well below 1 (about 3
look-alikes per product in a pool of 1000); R@10 is the meaningful figure.
Look-alikes share the exact same caption, and ties count in favour of the
correct text, which is why image->text R@1 is high for captions but not for
titles (which also name brand and material).

| images | text->image (caption) | image->text (caption) | text->image (title) | image->text (title) |
|---|---|---|---|---|
{chr(10).join(rows)}

Partial-attribute queries (what shoppers type): one query per partial look
present in the pool (e.g. every colour + category pair), text->image,
precision@10 = share of the top 10 images whose look is consistent with the
query (denominator min(10, #consistent images)). First figure: the shopper
phrasing ("red t-shirt", also a training template); second: a phrasing training
never used ("red coloured t-shirt", "dress with a striped pattern",
"sneakers for sale", "red and striped").

| query kind | queries | P@10, rendered at 64 px | P@10, 256 px JPEG |
|---|---|---|---|
{chr(10).join(partial_rows)}

Single queries at 64 px (P@10): {example_line}.

## Limitations

Material, brand, price and stock are not visible and are not encoded reliably;
use the BM25/keyword side of the hybrid search for them.
"""


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=demo_model_dir())
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--logit-scale-lr-mult", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument(
        "--partial-share",
        type=float,
        default=PARTIAL_SHARE,
        help="share of training texts naming only some visible attributes",
    )
    args = parser.parse_args(argv)
    train(
        args.out,
        steps=args.steps,
        lr=args.lr,
        logit_scale_lr_mult=args.logit_scale_lr_mult,
        seed=args.seed,
        threads=args.threads,
        eval_n=args.eval_n,
        partial_share=args.partial_share,
    )


if __name__ == "__main__":
    main()
