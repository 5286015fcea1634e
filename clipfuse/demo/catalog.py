"""Deterministic synthetic product catalog for demos, tests and the demo CLIP model.

Every product has a small set of *visible* attributes (category, colour, pattern)
that :func:`render_image` draws with PIL, and *text-only* attributes (material,
brand, price, stock) that only appear in the text fields.  Everything is a pure
function of the seed, so a catalog can be regenerated bit-for-bit anywhere.

The catalog file written by :func:`write_catalog` is JSON Lines, one document per
line::

    {"id": "p007-00042",
     "images": [{"path": "images/p007-00042.jpg"}],
     "title": "...", "caption": "...", "description": "...",
     "attributes": {"category": "...", "color": "...", "pattern": "...",
                    "material": "...", "brand": "...", "price": 89.0,
                    "in_stock": true, "group_id": "g007-00040",
                    "popularity": 37, "created_at": "2025-04-17"}}

``group_id`` makes colour variants of one product (same brand, category, pattern and
material: titles that differ only in the colour), ``popularity`` and ``created_at`` feed
business boosts; they come from random streams of their own, so the texts and images
(what the demo model learned from) are exactly what they were before they existed.

Image paths are relative to the folder holding the JSONL file.

``text_noise`` (default 0: clean, exactly as before) makes the *texts* of a
listing realistic and imperfect, like a real shop's (see :func:`noisy_texts`):
titles that omit the colour or pattern, synonyms ("navy" for blue, "tee" for
t-shirt), brand-only titles, other word orders, missing captions and thin
descriptions, and a few mislabelled listings whose text describes another
colour / pattern than the photo shows.  The image and the ``attributes`` (the
ground truth) are never changed.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

__all__ = [
    "BRANDS",
    "CATEGORIES",
    "COLORS",
    "MATERIALS",
    "PATTERNS",
    "PATTERN_COLOR",
    "Product",
    "generate_products",
    "make_caption",
    "make_description",
    "make_title",
    "noisy_texts",
    "product_to_document",
    "render_image",
    "write_catalog",
]

CATEGORIES: tuple[str, ...] = (
    "t-shirt",
    "dress",
    "sneakers",
    "ankle boots",
    "handbag",
    "cap",
    "backpack",
    "scarf",
)
"""Product categories; each has its own silhouette."""

COLORS: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "pink",
    "orange",
    "purple",
    "brown",
)
"""Main colours, chosen to be clearly distinct in RGB."""

PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checked")
"""Surface patterns drawn on the product."""

MATERIALS: tuple[str, ...] = ("leather", "cotton", "wool", "denim", "canvas")
"""Materials (text only, not visible in the image)."""

BRANDS: tuple[str, ...] = ("Acme", "Nordkap", "Lumen", "Verde", "Kestrel", "Orla")
"""Brand names (text only, not visible in the image)."""

_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 38),
    "blue": (35, 78, 212),
    "green": (34, 150, 62),
    "yellow": (247, 214, 36),
    "black": (28, 28, 30),
    "white": (248, 248, 246),
    "pink": (250, 135, 190),
    "orange": (248, 128, 20),
    "purple": (124, 48, 168),
    "brown": (116, 72, 36),
}

PATTERN_COLOR: dict[str, str] = {color: ("black" if color in ("white", "yellow") else "white") for color in COLORS}
"""Colour of the stripes/dots/checks drawn on a product of a given main colour."""

_PATTERN_NOUN: dict[str, str] = {
    "striped": "stripes",
    "dotted": "dots",
    "checked": "checks",
}

# Price ranges (min, max) per category, in the catalog's currency.
_PRICE_RANGE: dict[str, tuple[int, int]] = {
    "t-shirt": (12, 45),
    "dress": (35, 160),
    "sneakers": (45, 180),
    "ankle boots": (70, 260),
    "handbag": (40, 320),
    "cap": (10, 40),
    "backpack": (30, 150),
    "scarf": (15, 90),
}


@dataclass(frozen=True)
class Product:
    """One synthetic catalog item."""

    id: str
    category: str
    color: str
    pattern: str
    material: str
    brand: str
    price: float
    in_stock: bool
    title: str
    caption: str
    description: str
    #: the product this is a colour variant of: products of one brand, category, pattern and material
    #: (their titles differ only in the colour), at most GROUP_SIZE per group, each colour once
    group_id: str = ""
    #: a popularity figure (e.g. sales in the last 30 days), heavy-tailed
    popularity: int = 0
    #: when the product was listed, an ISO date
    created_at: str = "2024-01-01"


# --------------------------------------------------------------------------- text


_PLURAL_CATEGORIES: frozenset[str] = frozenset({"sneakers", "ankle boots"})


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def make_caption(category: str, color: str, pattern: str) -> str:
    """Short visual caption, e.g. ``"A red t-shirt with white stripes"``.

    Mentions exactly the visible attributes: category, colour and pattern.
    """
    plural = category in _PLURAL_CATEGORIES
    if pattern == "solid":
        return f"Solid {color} {category}" if plural else f"A solid {color} {category}"
    detail = f"with {PATTERN_COLOR[color]} {_PATTERN_NOUN[pattern]}"
    if plural:
        return f"{color.capitalize()} {category} {detail}"
    return f"{_article(color)} {color} {category} {detail}"


def make_title(brand: str, category: str, color: str, pattern: str, material: str) -> str:
    """Product title, e.g. ``"Acme red striped cotton t-shirt"``."""
    return f"{brand} {color} {pattern} {material} {category}"


def make_description(
    category: str,
    color: str,
    pattern: str,
    material: str,
    brand: str,
    price: float,
    in_stock: bool,
) -> str:
    """Longer description mentioning every attribute."""
    plural = category in _PLURAL_CATEGORIES
    if pattern == "solid":
        look = f"a solid {color} finish"
    else:
        look = f"{pattern} {color} fabric with {PATTERN_COLOR[color]} {_PATTERN_NOUN[pattern]}"
    stock = "In stock and ready to ship." if in_stock else "Currently out of stock."
    subject = f"These {category}" if plural else f"This {category}"
    verb, have = ("are", "have") if plural else ("is", "has")
    return (
        f"{subject} by {brand} {verb} made of {material} and {have} {look}. "
        f"Colour: {color}. Pattern: {pattern}. Price: {price:.2f}. {stock}"
    )


# ---------------------------------------------------------------------- generation


# ------------------------------------------------------------------------ text noise

#: Probabilities of each imperfection at ``text_noise=1`` (they scale linearly with it).
NOISE_RATES: dict[str, float] = {
    "mislabelled": 0.08,  # title, caption and description describe another colour / pattern
    "brand_only": 0.12,  # title is the brand and a model name, nothing else
    "omit_color": 0.35,  # title leaves out the colour
    "omit_pattern": 0.45,  # title leaves out the pattern
    "color_synonym": 0.35,  # "navy" for blue, "crimson" for red...
    "category_synonym": 0.35,  # "tee" for t-shirt, "trainers" for sneakers...
    "pattern_synonym": 0.35,  # "polka dot" for dotted, "plaid" for checked...
    "reorder": 0.3,  # "T-shirt, cotton, red - Acme"
    "no_caption": 0.5,  # no visual caption at all
    "thin_description": 0.6,  # description without the colour / pattern lines
}

COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "burgundy", "cherry"),
    "blue": ("navy", "cobalt", "azure"),
    "green": ("olive", "emerald", "forest"),
    "yellow": ("mustard", "lemon"),
    "black": ("jet", "charcoal", "onyx"),
    "white": ("ivory", "cream", "snow"),
    "pink": ("rose", "blush", "fuchsia"),
    "orange": ("tangerine", "rust", "coral"),
    "purple": ("violet", "plum", "lilac"),
    "brown": ("chocolate", "camel", "tan"),
}
"""Shop words for the main colours (never the colour word itself)."""

CATEGORY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("tee", "top", "crew neck"),
    "dress": ("frock", "sundress", "midi"),
    "sneakers": ("trainers", "runners", "kicks"),
    "ankle boots": ("booties", "chelsea boots"),
    "handbag": ("purse", "tote", "shoulder bag"),
    "cap": ("baseball hat", "snapback"),
    "backpack": ("rucksack", "daypack"),
    "scarf": ("shawl", "wrap", "muffler"),
}
PATTERN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "solid": ("plain", "classic"),
    "striped": ("stripy", "pinstripe", "breton"),
    "dotted": ("polka dot", "spotted"),
    "checked": ("plaid", "gingham", "tartan"),
}
_MODEL_NAMES: tuple[str, ...] = ("Nova", "Atlas", "Edge", "Aria", "Flow", "Summit", "Luna", "Core", "Drift")


def noisy_texts(product: Product, seed: int, text_noise: float) -> tuple[str, str, str]:
    """Imperfect (title, caption, description) for ``product``, a pure function of its id and ``seed``.

    Each imperfection of :data:`NOISE_RATES` happens independently with its rate
    times ``text_noise`` (clipped to 1).  A mislabelled listing keeps its true
    category but describes a different colour and often a different pattern; the
    other imperfections only drop or reword true information.  ``caption`` may be
    ``""`` (no caption).  ``text_noise <= 0`` returns the clean texts.
    """
    if text_noise <= 0:
        return product.title, product.caption, product.description
    rng = random.Random(f"clipfuse-demo-noise:{seed}:{product.id}")

    def happens(kind: str) -> bool:
        return rng.random() < min(1.0, NOISE_RATES[kind] * text_noise)

    category, color, pattern = product.category, product.color, product.pattern
    # Draw every decision up front, in a fixed order, so one rate does not shift the others' draws.
    mislabelled = happens("mislabelled")
    brand_only = happens("brand_only")
    omit_color, omit_pattern = happens("omit_color"), happens("omit_pattern")
    color_syn, category_syn, pattern_syn = (
        happens("color_synonym"),
        happens("category_synonym"),
        happens("pattern_synonym"),
    )
    reorder = happens("reorder")
    no_caption, thin = happens("no_caption"), happens("thin_description")
    other_color = rng.choice([c for c in COLORS if c != color])
    other_pattern = rng.choice([p for p in PATTERNS if p != pattern]) if rng.random() < 0.6 else pattern
    model_name = f"{rng.choice(_MODEL_NAMES)} {rng.randint(100, 999)}"
    color_word_pick, category_word_pick, pattern_word_pick = rng.random(), rng.random(), rng.random()

    if mislabelled:
        color, pattern = other_color, other_pattern

    def pick(options: tuple[str, ...], u: float) -> str:
        return options[min(len(options) - 1, int(u * len(options)))]

    color_word = pick(COLOR_SYNONYMS[color], color_word_pick) if color_syn else color
    category_word = pick(CATEGORY_SYNONYMS[category], category_word_pick) if category_syn else category
    pattern_word = pick(PATTERN_SYNONYMS[pattern], pattern_word_pick) if pattern_syn else pattern

    if brand_only:
        title = f"{product.brand} {model_name}"
    else:
        parts = {
            "color": "" if omit_color else color_word,
            "pattern": "" if omit_pattern else pattern_word,
            "material": product.material,
            "category": category_word,
        }
        if reorder:
            words = [parts["category"].capitalize(), parts["material"], parts["color"], parts["pattern"]]
            title = ", ".join(w for w in words if w) + f" - {product.brand}"
        else:
            words = [product.brand, parts["color"], parts["pattern"], parts["material"], parts["category"]]
            title = " ".join(w for w in words if w)

    caption = "" if no_caption else make_caption(category, color, pattern)
    if mislabelled or not thin:
        description = make_description(
            category, color, pattern, product.material, product.brand, product.price, product.in_stock
        )
    else:
        stock = "In stock and ready to ship." if product.in_stock else "Currently out of stock."
        description = f"{category_word.capitalize()} by {product.brand}, made of {product.material}. Price: {product.price:.2f}. {stock}"
    return title, caption, description


GROUP_SIZE = 4
"""Largest variant group of the demo catalog."""

_EPOCH = datetime.date(2024, 1, 1)


def _with_shop_data(products: list[Product], seed: int) -> list[Product]:
    """Variant groups, popularity and listing dates, from their own random streams.

    The texts, attributes and images (what the demo model learned from) stay exactly as
    they were. A product joins the first group of its (brand, category, pattern, material)
    that has fewer than GROUP_SIZE members and not its colour yet, else it founds a group
    named after itself; this depends only on earlier products, so a prefix of a catalog
    has the same groups.
    """
    open_groups: dict[tuple[str, str, str, str], list[tuple[str, set[str]]]] = {}
    out = []
    for p in products:
        key = (p.brand, p.category, p.pattern, p.material)
        groups = open_groups.setdefault(key, [])
        group = next((g for g in groups if len(g[1]) < GROUP_SIZE and p.color not in g[1]), None)
        if group is None:
            group = (f"g{p.id[1:]}", set())
            groups.append(group)
        group[1].add(p.color)
        rng = random.Random(f"clipfuse-demo-shop:{seed}:{p.id}")
        popularity = min(100_000, int(rng.paretovariate(1.1) * 10) - 10)
        created = _EPOCH + datetime.timedelta(days=rng.randrange(730))
        out.append(dataclasses.replace(p, group_id=group[0], popularity=popularity, created_at=created.isoformat()))
    return out


def generate_products(n: int, seed: int, *, text_noise: float = 0.0) -> list[Product]:
    """Generate ``n`` products deterministically from ``seed``.

    Ids have the form ``p{seed:03d}-{i:05d}`` and are therefore unique across
    seeds (for non-negative seeds).  ``text_noise > 0`` gives the products
    imperfect texts (:func:`noisy_texts`); their attributes and images are the
    same as with clean texts, and ``text_noise=0`` is exactly the clean catalog.
    """
    if n < 0:
        raise ValueError("n must be non-negative")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    if not 0.0 <= text_noise <= 10.0:
        raise ValueError("text_noise must be between 0 and 10 (rates are clipped to 1)")
    rng = random.Random(f"clipfuse-demo-catalog:{seed}")
    products: list[Product] = []
    for i in range(n):
        category = rng.choice(CATEGORIES)
        color = rng.choice(COLORS)
        pattern = rng.choice(PATTERNS)
        material = rng.choice(MATERIALS)
        brand = rng.choice(BRANDS)
        lo, hi = _PRICE_RANGE[category]
        price = float(rng.randint(lo, hi)) + rng.choice((0.0, 0.5, 0.99))
        in_stock = rng.random() < 0.8
        fields: dict[str, Any] = {
            "category": category,
            "color": color,
            "pattern": pattern,
            "material": material,
            "brand": brand,
            "price": price,
            "in_stock": in_stock,
        }
        products.append(
            Product(
                id=f"p{seed:03d}-{i:05d}",
                title=make_title(brand, category, color, pattern, material),
                caption=make_caption(category, color, pattern),
                description=make_description(**fields),
                **fields,
            )
        )
    products = _with_shop_data(products, seed)
    if text_noise > 0:
        noisy = []
        for p in products:
            title, caption, description = noisy_texts(p, seed, text_noise)
            noisy.append(dataclasses.replace(p, title=title, caption=caption, description=description))
        products = noisy
    return products


# ----------------------------------------------------------------------- rendering

# Silhouettes are drawn in a canonical frame of [-1, 1] x [-1, 1] (y grows downwards)
# and fit in a disc of radius ~1, so rotation and jitter keep them inside the canvas.

_Point = tuple[float, float]
_ToPx = Callable[[float, float], _Point]


def _poly(draw: ImageDraw.ImageDraw, to_px: _ToPx, pts: Sequence[_Point], fill: int = 255) -> None:
    draw.polygon([to_px(x, y) for x, y in pts], fill=fill)


def _ellipse(
    draw: ImageDraw.ImageDraw,
    to_px: _ToPx,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    fill: int = 255,
) -> None:
    (a, b), (c, d) = to_px(x0, y0), to_px(x1, y1)
    draw.ellipse((min(a, c), min(b, d), max(a, c), max(b, d)), fill=fill)


def _rounded(
    draw: ImageDraw.ImageDraw,
    to_px: _ToPx,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    radius: float,
    scale_px: float,
    fill: int = 255,
) -> None:
    (a, b), (c, d) = to_px(x0, y0), to_px(x1, y1)
    draw.rounded_rectangle(
        (min(a, c), min(b, d), max(a, c), max(b, d)),
        radius=max(1, int(radius * scale_px)),
        fill=fill,
    )


def _draw_tshirt(d: ImageDraw.ImageDraw, p: _ToPx, s: float) -> None:
    _poly(
        d,
        p,
        [
            (-0.25, -0.7),
            (-0.6, -0.58),
            (-0.95, -0.2),
            (-0.72, 0.02),
            (-0.5, -0.15),
            (-0.5, 0.75),
            (0.5, 0.75),
            (0.5, -0.15),
            (0.72, 0.02),
            (0.95, -0.2),
            (0.6, -0.58),
            (0.25, -0.7),
        ],
    )
    _ellipse(d, p, -0.25, -0.88, 0.25, -0.52, fill=0)  # neckline


def _draw_dress(d: ImageDraw.ImageDraw, p: _ToPx, s: float) -> None:
    _poly(
        d,
        p,
        [
            (-0.22, -0.85),
            (-0.14, -0.85),
            (-0.1, -0.62),
            (0.1, -0.62),
            (0.14, -0.85),
            (0.22, -0.85),
            (0.3, -0.45),
            (0.2, -0.15),
            (0.72, 0.85),
            (-0.72, 0.85),
            (-0.2, -0.15),
            (-0.3, -0.45),
        ],
    )


def _draw_sneakers(d: ImageDraw.ImageDraw, p: _ToPx, s: float) -> None:
    _poly(
        d,
        p,
        [
            (-0.85, 0.3),
            (-0.85, -0.2),
            (-0.6, -0.35),
            (-0.3, -0.3),
            (-0.05, -0.05),
            (0.45, 0.02),
            (0.8, 0.12),
            (0.92, 0.3),
        ],
    )
    _rounded(d, p, -0.9, 0.22, 0.95, 0.4, 0.08, s)  # sole


def _draw_ankle_boots(d: ImageDraw.ImageDraw, p: _ToPx, s: float) -> None:
    _poly(
        d,
        p,
        [
            (-0.55, -0.8),
            (0.05, -0.8),
            (0.1, -0.1),
            (0.55, 0.15),
            (0.75, 0.35),
            (0.75, 0.62),
            (-0.6, 0.62),
        ],
    )
    _poly(d, p, [(-0.6, 0.6), (-0.3, 0.6), (-0.33, 0.85), (-0.57, 0.85)])  # heel


def _draw_handbag(d: ImageDraw.ImageDraw, p: _ToPx, s: float) -> None:
    _ellipse(d, p, -0.45, -0.75, 0.45, 0.25)  # handle
    _ellipse(d, p, -0.3, -0.6, 0.3, 0.1, fill=0)
    _poly(d, p, [(-0.62, -0.15), (0.62, -0.15), (0.8, 0.65), (-0.8, 0.65)])


def _draw_cap(d: ImageDraw.ImageDraw, p: _ToPx, s: float) -> None:
    a, b = p(-0.7, -0.6)
    c, e = p(0.5, 0.6)
    d.pieslice((min(a, c), min(b, e), max(a, c), max(b, e)), 180, 360, fill=255)  # crown
    _poly(d, p, [(-0.7, -0.02), (0.95, -0.02), (0.9, 0.18), (0.3, 0.2), (-0.7, 0.12)])  # brim
    _ellipse(d, p, -0.19, -0.7, -0.01, -0.55)  # button


def _draw_backpack(d: ImageDraw.ImageDraw, p: _ToPx, s: float) -> None:
    _ellipse(d, p, -0.25, -0.95, 0.25, -0.55)  # top loop
    _ellipse(d, p, -0.13, -0.85, 0.13, -0.65, fill=0)
    _rounded(d, p, -0.55, -0.75, 0.55, 0.85, 0.3, s)  # body
    _rounded(d, p, -0.7, 0.0, -0.45, 0.6, 0.1, s)  # side pockets
    _rounded(d, p, 0.45, 0.0, 0.7, 0.6, 0.1, s)


def _draw_scarf(d: ImageDraw.ImageDraw, p: _ToPx, s: float) -> None:
    # Two long hanging ends joined by a loop, with a fringe at the bottom.
    _poly(d, p, [(-0.55, -0.7), (0.55, -0.7), (0.4, -0.4), (-0.4, -0.4)])
    _poly(d, p, [(-0.55, -0.7), (-0.3, -0.7), (-0.15, 0.7), (-0.4, 0.7)])
    _poly(d, p, [(0.1, -0.55), (0.35, -0.55), (0.45, 0.55), (0.2, 0.55)])
    for k in range(5):
        x = -0.4 + 0.05 * k + 0.012
        _poly(d, p, [(x, 0.7), (x + 0.025, 0.7), (x + 0.025, 0.9), (x, 0.9)])
        x2 = 0.2 + 0.05 * k + 0.012
        _poly(d, p, [(x2, 0.55), (x2 + 0.025, 0.55), (x2 + 0.025, 0.75), (x2, 0.75)])


_SILHOUETTES: dict[str, Callable[[ImageDraw.ImageDraw, _ToPx, float], None]] = {
    "t-shirt": _draw_tshirt,
    "dress": _draw_dress,
    "sneakers": _draw_sneakers,
    "ankle boots": _draw_ankle_boots,
    "handbag": _draw_handbag,
    "cap": _draw_cap,
    "backpack": _draw_backpack,
    "scarf": _draw_scarf,
}


# Category details (seams, soles, pockets...) drawn over the pattern, in a dark
# and a light shade, so that a category is recognisable locally too, not only
# from its outline.  Arguments: dark draw, light draw, mapping, line width (px).
_Details = Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw, _ToPx, int], None]


def _line(draw: ImageDraw.ImageDraw, to_px: _ToPx, pts: Sequence[_Point], width: int) -> None:
    draw.line([to_px(x, y) for x, y in pts], fill=255, width=width, joint="curve")


def _tshirt_details(dark: ImageDraw.ImageDraw, light: ImageDraw.ImageDraw, p: _ToPx, w: int) -> None:
    _line(dark, p, [(-0.3, -0.68), (-0.17, -0.5), (0.0, -0.45), (0.17, -0.5), (0.3, -0.68)], w * 2)  # collar
    _line(dark, p, [(-0.62, -0.1), (-0.84, -0.32)], w)  # sleeve hems
    _line(dark, p, [(0.62, -0.1), (0.84, -0.32)], w)
    _line(dark, p, [(-0.5, 0.62), (0.5, 0.62)], w)  # hem


def _dress_details(dark: ImageDraw.ImageDraw, light: ImageDraw.ImageDraw, p: _ToPx, w: int) -> None:
    _line(dark, p, [(-0.22, -0.18), (0.22, -0.18)], w * 3)  # belt
    _line(dark, p, [(-0.62, 0.7), (0.62, 0.7)], w)  # hem


def _sneakers_details(dark: ImageDraw.ImageDraw, light: ImageDraw.ImageDraw, p: _ToPx, w: int) -> None:
    a, b = p(-0.9, 0.22)
    c, d = p(0.95, 0.4)
    light.rounded_rectangle((min(a, c), min(b, d), max(a, c), max(b, d)), radius=max(1, w * 2), fill=255)  # sole
    for x in (-0.45, -0.3, -0.15):  # laces
        _line(dark, p, [(x - 0.08, -0.28 + (x + 0.45) * 0.8), (x + 0.1, -0.12 + (x + 0.45) * 0.8)], w)
    _line(dark, p, [(-0.85, 0.22), (0.9, 0.22)], w)


def _ankle_boots_details(dark: ImageDraw.ImageDraw, light: ImageDraw.ImageDraw, p: _ToPx, w: int) -> None:
    _poly(dark, p, [(-0.6, 0.5), (0.75, 0.5), (0.75, 0.62), (-0.6, 0.62)])  # sole
    _poly(dark, p, [(-0.6, 0.6), (-0.3, 0.6), (-0.33, 0.85), (-0.57, 0.85)])  # heel
    _line(dark, p, [(-0.55, -0.68), (0.05, -0.68)], w)  # top band
    _line(dark, p, [(0.05, -0.6), (0.08, 0.0)], w)  # zip


def _handbag_details(dark: ImageDraw.ImageDraw, light: ImageDraw.ImageDraw, p: _ToPx, w: int) -> None:
    _line(dark, p, [(-0.62, -0.15), (0.0, 0.25), (0.62, -0.15)], w * 2)  # flap
    _ellipse(dark, p, -0.07, 0.18, 0.07, 0.32)  # clasp


def _cap_details(dark: ImageDraw.ImageDraw, light: ImageDraw.ImageDraw, p: _ToPx, w: int) -> None:
    _line(dark, p, [(-0.68, -0.02), (0.48, -0.02)], w * 2)  # brim seam
    _line(dark, p, [(-0.1, -0.58), (-0.1, -0.02)], w)  # crown seams
    _line(dark, p, [(-0.1, -0.58), (-0.45, -0.05)], w)
    _line(dark, p, [(-0.1, -0.58), (0.25, -0.05)], w)


def _backpack_details(dark: ImageDraw.ImageDraw, light: ImageDraw.ImageDraw, p: _ToPx, w: int) -> None:
    a, b = p(-0.36, 0.12)
    c, d = p(0.36, 0.68)
    dark.rounded_rectangle((min(a, c), min(b, d), max(a, c), max(b, d)), radius=max(1, w * 3), outline=255, width=w * 2)
    _line(dark, p, [(-0.4, -0.35), (0.0, -0.55), (0.4, -0.35)], w)  # zip
    _line(dark, p, [(-0.36, 0.32), (0.36, 0.32)], w)  # pocket zip


def _scarf_details(dark: ImageDraw.ImageDraw, light: ImageDraw.ImageDraw, p: _ToPx, w: int) -> None:
    _line(dark, p, [(-0.39, 0.6), (-0.16, 0.6)], w * 2)  # bands above the fringes
    _line(dark, p, [(0.19, 0.45), (0.44, 0.45)], w * 2)
    _line(dark, p, [(-0.42, -0.55), (0.42, -0.55)], w)  # knot fold


_DETAILS: dict[str, _Details] = {
    "t-shirt": _tshirt_details,
    "dress": _dress_details,
    "sneakers": _sneakers_details,
    "ankle boots": _ankle_boots_details,
    "handbag": _handbag_details,
    "cap": _cap_details,
    "backpack": _backpack_details,
    "scarf": _scarf_details,
}


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _jitter_rgb(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)
    return (r, g, b)


def _pattern_layer(
    size: int,
    pattern: str,
    base: tuple[int, int, int],
    ink: tuple[int, int, int],
    rng: random.Random,
) -> Image.Image:
    """Full-canvas texture of ``base`` colour with the pattern drawn in ``ink``."""
    layer = Image.new("RGB", (size, size), base)
    if pattern == "solid":
        return layer
    draw = ImageDraw.Draw(layer)
    period = max(4.0, size * rng.uniform(0.085, 0.11))
    phase = rng.uniform(0, period)
    if pattern == "striped":
        width = period * 0.45
        horizontal = rng.random() < 0.7
        x = -period + phase
        while x < size + period:
            if horizontal:
                draw.rectangle((0, round(x), size, round(x + width) - 1), fill=ink)
            else:
                draw.rectangle((round(x), 0, round(x + width) - 1, size), fill=ink)
            x += period
    elif pattern == "dotted":
        radius = period * 0.24
        pos_y = -period + phase
        row = 0
        while pos_y < size + period:
            pos_x = -period + phase + (period / 2 if row % 2 else 0.0)
            while pos_x < size + period:
                draw.ellipse(
                    (pos_x - radius, pos_y - radius, pos_x + radius, pos_y + radius),
                    fill=ink,
                )
                pos_x += period
            pos_y += period
            row += 1
    elif pattern == "checked":
        cell = period * 0.6
        n_cells = int(size / cell) + 3
        for i in range(-1, n_cells):
            for j in range(-1, n_cells):
                if (i + j) % 2 == 0:
                    x0 = i * cell + phase * 0.5
                    y0 = j * cell + phase * 0.5
                    draw.rectangle(
                        (
                            round(x0),
                            round(y0),
                            round(x0 + cell) - 1,
                            round(y0 + cell) - 1,
                        ),
                        fill=ink,
                    )
    else:
        raise ValueError(f"unknown pattern: {pattern!r}")
    return layer


@functools.lru_cache(maxsize=16)
def _ramp(size: int) -> Image.Image:
    """Horizontal 0..255 ramp of ``size`` x ``size`` pixels (mode ``L``)."""
    ramp = Image.linear_gradient("L").rotate(90)  # left (0) to right (255)
    return ramp if size == 256 else ramp.resize((size, size), Image.Resampling.BILINEAR)


_RAMP_TRANSPOSES: tuple[Image.Transpose | None, ...] = (
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
)


def _gradient(
    size: int,
    start: tuple[int, int, int],
    end: tuple[int, int, int],
    rng: random.Random,
) -> Image.Image:
    """Linear RGB gradient from ``start`` to ``end`` in a random axis direction."""
    ramp = _ramp(size)
    transpose = rng.choice(_RAMP_TRANSPOSES)
    if transpose is not None:
        ramp = ramp.transpose(transpose)
    return Image.composite(Image.new("RGB", (size, size), end), Image.new("RGB", (size, size), start), ramp)


def _background(size: int, rng: random.Random) -> Image.Image:
    """Light, slightly tinted background with a soft gradient."""
    base = [rng.uniform(208, 242) for _ in range(3)]
    start = _jitter_rgb(tuple(int(c) for c in base), rng, 12)  # type: ignore[arg-type]
    end = _jitter_rgb(tuple(int(c) for c in base), rng, 12)  # type: ignore[arg-type]
    return _gradient(size, start, end, rng)


_NOISE_TILE = 512
_NOISE_AMPLITUDE = 7


@functools.lru_cache(maxsize=1)
def _noise_tile() -> Image.Image:
    """Fixed RGB noise tile with values in ``[0, 2 * _NOISE_AMPLITUDE]``."""
    values = np.random.default_rng(20240601).integers(
        0, 2 * _NOISE_AMPLITUDE + 1, size=(_NOISE_TILE, _NOISE_TILE, 3), dtype=np.uint8
    )
    return Image.fromarray(values, mode="RGB")


def render_image(product: Product, size: int = 256, seed: int | None = None) -> Image.Image:
    """Render a product photo-like image of ``size`` x ``size`` pixels (RGB).

    The category's silhouette is filled with the product's colour and pattern,
    given a dark outline and a few category details (seams, sole, pocket...), and
    drawn on a light, slightly noisy and tinted background, with deterministic
    random position jitter, scale and a small rotation.  The randomness is a pure
    function of ``product.id`` and ``seed``: the same arguments always give the
    same pixels, while two products with identical attributes (or one product with
    different ``seed`` values) give different images.  The object stays within the
    central ~90% of the canvas, so a centre crop never cuts it.
    """
    if size < 16:
        raise ValueError("size must be at least 16 pixels")
    if product.category not in _SILHOUETTES:
        raise ValueError(f"unknown category: {product.category!r}")
    if product.color not in _RGB:
        raise ValueError(f"unknown color: {product.color!r}")
    if product.pattern not in PATTERNS:
        raise ValueError(f"unknown pattern: {product.pattern!r}")
    key = _stable_seed("render", product.id, seed)
    rng = random.Random(key)

    # Geometry: the canonical frame [-1, 1] is mapped (possibly mirrored) onto a
    # box of half-width `half` around a jittered centre, then rotated slightly.
    scale = rng.uniform(0.7, 0.82)
    half = size * 0.5 * scale
    cx = size / 2 + rng.uniform(-0.05, 0.05) * size
    cy = size / 2 + rng.uniform(-0.05, 0.05) * size
    angle = rng.uniform(-12.0, 12.0)
    flip = -1.0 if rng.random() < 0.5 else 1.0

    def to_px(x: float, y: float) -> _Point:
        return (cx + flip * x * half, cy + y * half)

    mask = Image.new("L", (size, size), 0)
    _SILHOUETTES[product.category](ImageDraw.Draw(mask), to_px, half)
    dark = Image.new("L", (size, size), 0)
    light = Image.new("L", (size, size), 0)
    line_px = max(1, round(size / 80))
    _DETAILS[product.category](ImageDraw.Draw(dark), ImageDraw.Draw(light), to_px, line_px)
    # Rotate the three masks at once, as the bands of one RGB image.
    rotated = Image.merge("RGB", (mask, dark, light)).rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy))
    mask, dark, light = rotated.split()

    base = _jitter_rgb(_RGB[product.color], rng, 10)
    ink = _jitter_rgb(_RGB[PATTERN_COLOR[product.color]], rng, 6)
    texture = _pattern_layer(size, product.pattern, base, ink, rng)
    # Soft shading across the object so it doesn't look perfectly flat.
    lo = int(rng.uniform(215, 240))
    shade = _gradient(size, (255, 255, 255), (lo, lo, lo), rng)
    texture = ImageChops.multiply(texture, shade)

    # A dark outline (dilated mask) keeps white objects visible on light backgrounds.
    radius = max(1.0, size / 160)
    outline = mask.filter(ImageFilter.BoxBlur(radius)).point(lambda v: 255 if v > 8 else 0)
    outline_rgb = tuple(int(c * 0.35 + 12) for c in base)

    img = _background(size, rng)
    img.paste(outline_rgb, (0, 0, size, size), outline)
    img.paste(texture, (0, 0), mask)
    sole_rgb = _jitter_rgb((236, 234, 228), rng, 6)
    if light.getbbox():
        img.paste(sole_rgb, (0, 0, size, size), light)
    img.paste(outline_rgb, (0, 0, size, size), dark)

    # Mild per-pixel sensor noise: a random window of a fixed noise tile.
    tile = _noise_tile()
    ox = rng.randrange(0, _NOISE_TILE - size + 1) if size < _NOISE_TILE else 0
    oy = rng.randrange(0, _NOISE_TILE - size + 1) if size < _NOISE_TILE else 0
    noise = tile.crop((ox, oy, ox + size, oy + size))
    if noise.size != (size, size):
        noise = noise.resize((size, size), Image.Resampling.NEAREST)
    return ImageChops.add(img, noise, scale=1.0, offset=-_NOISE_AMPLITUDE)


# ------------------------------------------------------------------------- writing


def product_to_document(product: Product, image_path: str) -> dict[str, Any]:
    """The catalog JSONL document for ``product`` (``image_path`` relative to the JSONL)."""
    return {
        "id": product.id,
        "images": [{"path": image_path}],
        "title": product.title,
        "caption": product.caption,
        "description": product.description,
        "attributes": {
            "category": product.category,
            "color": product.color,
            "pattern": product.pattern,
            "material": product.material,
            "brand": product.brand,
            "price": product.price,
            "in_stock": product.in_stock,
            "group_id": product.group_id,
            "popularity": product.popularity,
            "created_at": product.created_at,
        },
    }


_FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "jpeg": ("JPEG", ".jpg", {"quality": 90}),
    "jpg": ("JPEG", ".jpg", {"quality": 90}),
    "png": ("PNG", ".png", {"optimize": False}),
    "webp": ("WEBP", ".webp", {"quality": 90}),
}


def write_catalog(
    out_dir: Path,
    n: int,
    seed: int,
    *,
    image_size: int = 256,
    image_format: str = "jpeg",
    text_noise: float = 0.0,
) -> Path:
    """Render ``n`` products of ``seed`` into ``out_dir`` and return the JSONL path.

    Images go to ``out_dir/images/<id>.jpg`` (extension per ``image_format``:
    ``jpeg``, ``png`` or ``webp``); the catalog goes to ``out_dir/catalog.jsonl``.
    ``text_noise`` as in :func:`generate_products` (0: clean texts).
    """
    fmt = image_format.lower()
    if fmt not in _FORMATS:
        raise ValueError(f"unsupported image_format {image_format!r}; use one of {sorted(_FORMATS)}")
    pil_format, ext, save_kwargs = _FORMATS[fmt]
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    jsonl_path = out_dir / "catalog.jsonl"
    with jsonl_path.open("w", encoding="utf-8") as fh:
        for product in generate_products(n, seed, text_noise=text_noise):
            rel = f"images/{product.id}{ext}"
            render_image(product, size=image_size).save(out_dir / rel, format=pil_format, **save_kwargs)
            fh.write(json.dumps(product_to_document(product, rel), ensure_ascii=False) + "\n")
    return jsonl_path
