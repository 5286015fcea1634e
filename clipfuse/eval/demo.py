"""A query set with graded judgments for the synthetic demo catalog, from the generator's ground truth.

Each query asks for a set of attributes (always the category, plus one to three of
colour, pattern, brand, material). A product's grade is

* **2** (exact match) when it has every asked attribute;
* **1** (partial match) when it has the category and all but one of the other asked attributes;
* 0 otherwise (not listed in the qrels).

Every query is built from a product of the catalog, so it has at least one grade-2
product. Query kinds, and why they need different signals:

* ``visual`` text ("red striped t-shirt"): colour and pattern are in every photo but
  missing or reworded in many noisy titles: the image vector knows them, BM25 may not;
* ``catalog`` text ("Acme leather handbag"): brand and material are in no photo: only
  the texts (text vector, BM25) know them;
* ``mixed`` text ("red Acme handbag", "black wool scarf"): needs both;
* ``image``: another photo of a product ("more like this"): category, colour and pattern;
* ``image+text``: a product's photo with a modifier ("black sneakers": this, but in black).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from clipfuse.demo.catalog import COLORS, Product, render_image
from clipfuse.eval.loaders import EvalQuery

__all__ = ["QUERY_MIX", "grade", "make_demo_queries"]

#: share of each query kind
QUERY_MIX: dict[str, float] = {"visual": 0.3, "catalog": 0.2, "mixed": 0.3, "image": 0.1, "image+text": 0.1}

_PATTERN_WORD = {"solid": "plain", "striped": "striped", "dotted": "dotted", "checked": "checked"}


def grade(product: Product, asked: dict[str, str]) -> int:
    """2: every asked attribute matches; 1: the category and all but one of the others; else 0."""
    if product.category != asked["category"]:
        return 0
    misses = sum(1 for name, value in asked.items() if name != "category" and getattr(product, name) != value)
    return 2 if misses == 0 else 1 if misses == 1 else 0


def _visual_text(p: Product, rng: random.Random) -> tuple[str, dict[str, str]]:
    if rng.random() < 0.5 and p.pattern != "solid":
        return f"{p.color} {p.pattern} {p.category}", {"category": p.category, "color": p.color, "pattern": p.pattern}
    return f"{p.color} {p.category}", {"category": p.category, "color": p.color}


def _catalog_text(p: Product, rng: random.Random) -> tuple[str, dict[str, str]]:
    u = rng.random()
    if u < 0.4:
        return f"{p.brand} {p.material} {p.category}", {
            "category": p.category,
            "brand": p.brand,
            "material": p.material,
        }
    if u < 0.7:
        return f"{p.brand} {p.category}", {"category": p.category, "brand": p.brand}
    return f"{p.material} {p.category}", {"category": p.category, "material": p.material}


def _mixed_text(p: Product, rng: random.Random) -> tuple[str, dict[str, str]]:
    u = rng.random()
    if u < 0.4:
        return f"{p.color} {p.brand} {p.category}", {"category": p.category, "color": p.color, "brand": p.brand}
    if u < 0.8:
        return f"{p.color} {p.material} {p.category}", {
            "category": p.category,
            "color": p.color,
            "material": p.material,
        }
    return f"{p.brand} {_PATTERN_WORD[p.pattern]} {p.category}", {
        "category": p.category,
        "pattern": p.pattern,
        "brand": p.brand,
    }


def make_demo_queries(
    products: Sequence[Product],
    n_queries: int,
    *,
    seed: int = 0,
    images_dir: Path | None = None,
    image_size: int = 256,
) -> tuple[list[EvalQuery], dict[str, dict[str, int]]]:
    """``n_queries`` queries over ``products`` and their graded qrels.

    Image queries need ``images_dir``: their photos (a new rendering of the product,
    not the indexed one) are written there; without it only text queries are made.
    """
    if not products:
        raise ValueError("no products to build queries from")
    rng = random.Random(f"clipfuse-eval-demo-queries:{seed}")
    kinds = list(QUERY_MIX) if images_dir is not None else ["visual", "catalog", "mixed"]
    weights = [QUERY_MIX[k] for k in kinds]
    if images_dir is not None:
        images_dir.mkdir(parents=True, exist_ok=True)
    queries: list[EvalQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    for i in range(n_queries):
        query_id = f"q{i + 1:04d}"
        kind = rng.choices(kinds, weights)[0]
        target = rng.choice(products)
        text: str | None
        image: str | None = None
        if kind == "visual":
            text, asked = _visual_text(target, rng)
        elif kind == "catalog":
            text, asked = _catalog_text(target, rng)
        elif kind == "mixed":
            text, asked = _mixed_text(target, rng)
        else:
            assert images_dir is not None
            path = images_dir / f"{query_id}.jpg"
            render_image(target, size=image_size, seed=10_000 + i).save(path, format="JPEG", quality=90)
            image = str(path.resolve())
            if kind == "image":
                text, asked = None, {"category": target.category, "color": target.color, "pattern": target.pattern}
            else:
                # "this, but in <colour>": prefer a colour some product of this category and pattern has
                present = sorted(
                    {
                        p.color
                        for p in products
                        if p.category == target.category and p.pattern == target.pattern and p.color != target.color
                    }
                )
                new_color = rng.choice(present or [c for c in COLORS if c != target.color])
                text = f"{new_color} {target.category}"
                asked = {"category": target.category, "color": new_color, "pattern": target.pattern}
        judged = {p.id: g for p in products if (g := grade(p, asked)) > 0}
        queries.append(EvalQuery(id=query_id, text=text, image=image, group=kind))
        qrels[query_id] = judged
    return queries, qrels
