"""Tests for the deterministic synthetic demo catalog (clipfuse.demo.catalog)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipfuse.demo.catalog import (
    BRANDS,
    CATEGORIES,
    COLORS,
    MATERIALS,
    PATTERNS,
    Product,
    generate_products,
    render_image,
    write_catalog,
)

PATTERN_WORDS = {
    "solid": "solid",
    "striped": "stripes",
    "dotted": "dots",
    "checked": "checks",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_vocabularies_are_distinct_tuples_of_str() -> None:
    for vocab in (CATEGORIES, COLORS, PATTERNS, MATERIALS, BRANDS):
        assert isinstance(vocab, tuple)
        assert vocab and all(isinstance(v, str) and v for v in vocab)
        assert len(set(vocab)) == len(vocab)
    assert len(CATEGORIES) >= 6
    assert len(COLORS) >= 8
    assert "solid" in PATTERNS


def test_generate_products_is_deterministic() -> None:
    assert generate_products(200, 3) == generate_products(200, 3)
    # A prefix of a longer run is the same products.
    assert generate_products(50, 3) == generate_products(200, 3)[:50]
    assert generate_products(0, 3) == []


def test_different_seeds_give_different_products() -> None:
    a = generate_products(100, 1)
    b = generate_products(100, 2)
    assert [p.id for p in a] != [p.id for p in b]
    assert [(p.category, p.color, p.pattern) for p in a] != [(p.category, p.color, p.pattern) for p in b]


def test_ids_unique_within_and_across_seeds() -> None:
    ids = [p.id for seed in (0, 1, 7, 42, 999) for p in generate_products(300, seed)]
    assert len(ids) == len(set(ids))


def test_products_use_the_vocabularies_and_cover_them() -> None:
    products = generate_products(2000, 11)
    assert {p.category for p in products} == set(CATEGORIES)
    assert {p.color for p in products} == set(COLORS)
    assert {p.pattern for p in products} == set(PATTERNS)
    assert {p.material for p in products} == set(MATERIALS)
    assert {p.brand for p in products} == set(BRANDS)
    for p in products:
        assert isinstance(p, Product)
        assert isinstance(p.price, float) and p.price > 0
        assert isinstance(p.in_stock, bool)


def test_text_mentions_the_attributes() -> None:
    for p in generate_products(500, 5):
        title, caption, desc = p.title.lower(), p.caption.lower(), p.description.lower()
        for attr in (p.category, p.color, p.pattern):
            assert attr in title, (attr, p.title)
            assert attr in desc, (attr, p.description)
        assert p.brand.lower() in title and p.material in title
        assert p.brand.lower() in desc and p.material in desc
        assert p.category in caption and p.color in caption
        assert PATTERN_WORDS[p.pattern] in caption, (p.pattern, p.caption)


def test_render_image_is_deterministic_and_varied() -> None:
    products = generate_products(300, 8)
    p = products[0]
    a = render_image(p, size=128)
    assert a.mode == "RGB" and a.size == (128, 128)
    assert a.tobytes() == render_image(p, size=128).tobytes()
    assert a.tobytes() != render_image(p, size=128, seed=1).tobytes()
    assert render_image(p, size=128, seed=1).tobytes() == render_image(p, size=128, seed=1).tobytes()
    # Two products with the same visible attributes still give different pixels.
    twin = next(q for q in products[1:] if (q.category, q.color, q.pattern) == (p.category, p.color, p.pattern))
    assert a.tobytes() != render_image(twin, size=128).tobytes()


@pytest.mark.parametrize("size", [64, 256])
def test_render_image_keeps_the_object_inside_a_margin(size: int) -> None:
    # The background is light; the object (with its dark outline) must not touch
    # the outer 3 % of the canvas, so resizing/centre-cropping never cuts it.
    margin = max(1, int(size * 0.03))
    for p in generate_products(120, 21):
        pixels = np.asarray(render_image(p, size=size)).min(axis=2)
        dark = pixels < 150
        assert dark.any(), p
        assert not dark[:margin].any() and not dark[-margin:].any(), p
        assert not dark[:, :margin].any() and not dark[:, -margin:].any(), p


def test_render_image_shows_the_colour() -> None:
    # The dominant saturated colour of a solid product is its own colour.
    ref = {"red": (214, 32, 38), "blue": (35, 78, 212), "green": (34, 150, 62)}
    products = [p for p in generate_products(400, 4) if p.pattern == "solid" and p.color in ref]
    assert products
    for p in products[:20]:
        arr = np.asarray(render_image(p, size=64)).reshape(-1, 3).astype(int)
        dists = {c: np.abs(arr - np.array(rgb)).sum(axis=1) for c, rgb in ref.items()}
        counts = {c: int((d < 60).sum()) for c, d in dists.items()}
        assert max(counts, key=counts.__getitem__) == p.color, (p, counts)


def test_write_catalog_shape_and_images(tmp_path: Path) -> None:
    out = tmp_path / "cat"
    jsonl = write_catalog(out, n=25, seed=9, image_size=96)
    assert jsonl == out / "catalog.jsonl"
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 25
    products = generate_products(25, 9)
    for line, p in zip(lines, products, strict=True):
        doc = json.loads(line)
        assert list(doc) == ["id", "images", "title", "caption", "description", "attributes"]
        assert doc["id"] == p.id
        assert doc["images"] == [{"path": f"images/{p.id}.jpg"}]
        assert doc["title"] == p.title
        assert doc["caption"] == p.caption
        assert doc["description"] == p.description
        attrs = doc["attributes"]
        assert list(attrs) == [
            "category",
            "color",
            "pattern",
            "material",
            "brand",
            "price",
            "in_stock",
            "group_id",
            "popularity",
            "created_at",
        ]
        assert attrs == {
            "category": p.category,
            "color": p.color,
            "pattern": p.pattern,
            "material": p.material,
            "brand": p.brand,
            "price": p.price,
            "in_stock": p.in_stock,
            "group_id": p.group_id,
            "popularity": p.popularity,
            "created_at": p.created_at,
        }
        assert isinstance(attrs["price"], float)
        assert isinstance(attrs["in_stock"], bool)
        image_path = jsonl.parent / doc["images"][0]["path"]
        with Image.open(image_path) as im:
            assert im.format == "JPEG"
            im.load()
            assert im.size == (96, 96)
            assert im.mode == "RGB"
    assert sorted(f.name for f in (out / "images").iterdir()) == sorted(f"{p.id}.jpg" for p in products)


def test_write_catalog_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    a = write_catalog(tmp_path / "a", n=12, seed=4, image_size=64)
    b = write_catalog(tmp_path / "b", n=12, seed=4, image_size=64)
    assert a.read_bytes() == b.read_bytes()
    for img in sorted((tmp_path / "a" / "images").iterdir()):
        assert _sha(img) == _sha(tmp_path / "b" / "images" / img.name)


def test_write_catalog_png(tmp_path: Path) -> None:
    jsonl = write_catalog(tmp_path, n=3, seed=2, image_size=48, image_format="png")
    doc = json.loads(jsonl.read_text(encoding="utf-8").splitlines()[0])
    assert doc["images"][0]["path"].endswith(".png")
    with Image.open(tmp_path / doc["images"][0]["path"]) as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError):
        write_catalog(tmp_path, n=1, seed=2, image_format="gif")


#: sha256 of generate_products(60, 3, text_noise=1.0) as dicts, computed before the shop fields existed
PINNED_TEXTS_SHA256 = "1672856cdeee1f89af42bfc86d49fecfa99c52f3de468a2fa0703517982e5c96"


def test_variant_groups_are_one_product_in_several_colours() -> None:
    import datetime

    from clipfuse.demo.catalog import GROUP_SIZE

    products = generate_products(400, 907)
    groups: dict[str, list[Product]] = {}
    for p in products:
        groups.setdefault(p.group_id, []).append(p)
    multi = [g for g in groups.values() if len(g) > 1]
    assert len(multi) >= 30  # the demo catalog has real variant groups
    for members in groups.values():
        assert len(members) <= GROUP_SIZE
        assert len({m.color for m in members}) == len(members)  # each colour once
        assert len({(m.brand, m.category, m.pattern, m.material) for m in members}) == 1
        assert len({m.title.replace(m.color, "") for m in members}) == 1  # titles differ only in the colour
    # a prefix of a catalog has the same groups, popularity and dates
    assert generate_products(120, 907) == products[:120]
    assert all(isinstance(p.popularity, int) and p.popularity >= 0 for p in products)
    assert len({p.popularity for p in products}) > 50
    dates = [datetime.date.fromisoformat(p.created_at) for p in products]
    assert min(dates) >= datetime.date(2024, 1, 1) and max(dates) < datetime.date(2026, 1, 1)


def test_shop_data_leaves_texts_and_visible_attributes_unchanged() -> None:
    """The demo model was trained on these texts: the shop fields come from their own random streams."""
    import dataclasses

    products = generate_products(60, 3, text_noise=1.0)
    digest = hashlib.sha256()
    for p in products:
        fields = dataclasses.asdict(p)
        for extra in ("group_id", "popularity", "created_at"):
            fields.pop(extra)
        digest.update(json.dumps(fields, sort_keys=True).encode())
    assert digest.hexdigest() == PINNED_TEXTS_SHA256
