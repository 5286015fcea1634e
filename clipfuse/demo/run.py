"""``clipfuse demo``: the whole job end to end on the embedded store, no servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from clipfuse.console import print_hits, print_report
from clipfuse.demo.catalog import write_catalog
from clipfuse.factory import build_backend, build_searcher
from clipfuse.ingest.run import run_index
from clipfuse.schemas import FilterCondition, ImageSource, SearchRequest, Weights
from clipfuse.schemas.rules import RuleSet
from clipfuse.settings import DEMO_MODEL, Settings

__all__ = ["DEMO_SEED", "recall_at_k", "run_demo"]

#: the demo catalog's seed (the demo model was trained on other seeds: these products are unseen)
DEMO_SEED = 907


def _bad_documents(images_dir: Path) -> list[dict[str, Any]]:
    """Two deliberately broken products, to show that they are rejected alone."""
    corrupt = images_dir / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return [
        {"id": "broken-image", "images": [{"path": "images/corrupt.jpg"}], "title": "Product with a corrupt photo"},
        {
            "id": "missing-image",
            "images": [{"path": "images/does-not-exist.jpg"}],
            "title": "Product whose photo is gone",
        },
    ]


def recall_at_k(searcher: Any, queries: list[tuple[str, str]], *, weights: Weights, k: int = 10) -> float:
    """Share of (query text, target id) pairs whose target is in the top k."""
    found = 0
    for text, target in queries:
        response = searcher.search(SearchRequest(text=text, weights=weights, k=k))
        found += any(hit.id == target for hit in response.hits)
    return found / max(1, len(queries))


def run_demo(directory: Path, *, size: int = 400, console: Console | None = None) -> dict[str, float]:
    console = console or Console()
    directory.mkdir(parents=True, exist_ok=True)
    store = directory / "store"
    console.rule("[bold]clipfuse demo")
    console.print(f"1. generating a synthetic catalog of {size} products in {directory / 'catalog'}")
    catalog = write_catalog(directory / "catalog", n=size, seed=DEMO_SEED)
    products = [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]
    with catalog.open("a") as fh:
        for bad in _bad_documents(catalog.parent / "images"):
            fh.write(json.dumps(bad) + "\n")

    settings = Settings()
    settings = settings.model_copy(
        update={
            "index": "products",
            "model": settings.model.model_copy(update={"name": DEMO_MODEL, "pretrained": None, "device": "cpu"}),
            "qdrant": settings.qdrant.model_copy(update={"url": None}),
        }
    ).with_store(store)
    engine = {"qdrant-edge": "Qdrant Edge", "qdrant": "qdrant-client local"}.get(settings.engine, settings.engine)
    console.print(f"2. indexing it with the shipped demo model into the embedded {engine} store at {store}")
    report = run_index(settings, catalog)
    print_report(report, None)

    console.print("3. sample searches")
    backend = build_backend(settings)
    searcher = build_searcher(settings, backend=backend)
    try:
        first = products[0]
        attrs = first["attributes"]
        # a text query whose exact answer exists in this catalog: the look of another product
        look = products[1]["attributes"]
        look_query = f"{look['color']} {look['pattern']} {look['category']}"
        image_path = str((catalog.parent / first["images"][0]["path"]).resolve())
        samples = [
            (f"text: '{look_query}'", SearchRequest(text=look_query, k=5)),
            (
                f"image: the photo of {first['id']} ({first['title']})",
                SearchRequest(image=ImageSource(path=image_path), k=5),
            ),
            (
                f"image + text: that photo, 'but in black' (was {attrs['color']})",
                SearchRequest(image=ImageSource(path=image_path), text=f"black {attrs['category']}", k=5),
            ),
            (
                "text + filter: 'ankle boots' with price <= 120 and in stock",
                SearchRequest(
                    text="ankle boots",
                    filters=[
                        FilterCondition(field="price", op="lte", value=120),
                        FilterCondition(field="in_stock", op="eq", value=True),
                    ],
                    k=5,
                ),
            ),
        ]
        for title, request in samples:
            print_hits(searcher.search(request), title=title)

        console.print("   a shop page: facets, one hit per product (colour variants attached), business boosts")
        shop = SearchRequest.model_validate(
            {
                "text": "handbag",
                "k": 5,
                "facets": ["brand", "color", "price"],
                "max_values_per_facet": 5,
                "collapse": {"field": "group_id", "fields": ["color"]},
                "boosts": [
                    {"type": "field", "field": "popularity", "function": "log1p", "weight": 0.05},
                    {"type": "filter", "filters": [{"field": "in_stock", "value": True}], "weight": 0.1},
                    {"type": "decay", "field": "created_at", "origin": "2025-12-31", "scale": "90d", "weight": 0.1},
                ],
            }
        )
        print_hits(searcher.search(shop), title="shop: 'handbag', collapsed by group_id, boosted", explain=True)
        pinned = next(p for p in products if p["attributes"]["category"] == "backpack")
        rules_path = directory / "rules.yaml"
        rules_path.write_text(
            "rules:\n"
            "  - id: backpack-week\n"
            "    description: promote a backpack on handbag searches\n"
            "    conditions: [{pattern: handbag, anchoring: contains}]\n"
            f"    consequence: {{pin: [{{id: {pinned['id']}, position: 1}}]}}\n",
            encoding="utf-8",
        )
        searcher.load_rules(rules_path)
        print_hits(
            searcher.search(shop.model_copy(update={"boosts": []})),
            title=f"the same search with the rules file {rules_path.name}: {pinned['id']} pinned first",
        )
        searcher.load_rules(RuleSet())

        console.print("4. retrieval figures on this catalog (query = a product's caption, target = that product)")
        queries = [(p["caption"], p["id"]) for p in products[:200]]
        figures = {
            "text->image R@10": recall_at_k(searcher, queries, weights=Weights(image=1, text=0, bm25=0)),
            "hybrid (RRF image+text+BM25) R@10": recall_at_k(searcher, queries, weights=Weights()),
        }
    finally:
        backend.close()
    for name, value in figures.items():
        console.print(f"   {name}: [bold]{value:.3f}[/]")
    console.print(
        f"\nTry it yourself:\n  clipfuse search 'blue dotted scarf' --store {store}\n"
        f"  clipfuse search 'sneakers' --filter 'price<=80' --store {store} --json\n"
        f"  clipfuse serve --store {store}      # web search page on http://127.0.0.1:8000/",
        soft_wrap=True,  # a command stays on one line, to copy and paste
        markup=False,
    )
    return figures
