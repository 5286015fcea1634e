"""The README's code that a user copies runs as written.

Each block is taken from README.md as it stands (the block after its ``tested by
tests/test_readme.py`` marker). "Query it with your own client": run with plain qdrant-client
against a qdrant-client local store of the demo catalog that clipfuse indexed, its top 10 must be
``clipfuse search``'s. "As a library": run with the server and the pretrained model swapped for
that store and the demo model (the only two substitutions), it prints the hits it promises.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin import HybridSearcher
from clipfuse.plugin.qdrant import QdrantBackend
from clipfuse.schemas import FilterCondition, SearchRequest

README = Path(__file__).parent.parent / "README.md"
MARKER = "<!-- tested by tests/test_readme.py: it runs"
LIBRARY = "<!-- tested by tests/test_readme.py (library)"


def readme_block(marker: str) -> str:
    """The first fenced code block after ``marker`` in README.md."""
    text = README.read_text(encoding="utf-8")
    start = text.index(marker)
    match = re.compile(r"```\w*\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no code block after {marker!r} in README.md"
    return match.group(1)


@pytest.fixture
def recipe() -> Any:
    code = readme_block(MARKER)
    assert not re.search(r"^\s*(from|import)\s+clipfuse", code, re.M)  # the shop's own client, none of ours
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md (Query it with your own client)", "exec"), namespace)
    return namespace["hybrid_search"]


QUERIES = [
    "red leather handbag",
    "blue dotted scarf",
    "striped sneakers",
    "black wool coat",
    "purple checked ankle boots",
    "green cotton dress",
]


def test_the_qdrant_recipe_gives_clipfuse_top_10(
    recipe: Any, qdrant_client: Any, collection_name: str, demo_embedder: Any, demo_documents: list[dict[str, Any]]
) -> None:
    from qdrant_client import models

    report = Indexer(demo_embedder, QdrantBackend(qdrant_client, collection_name)).index(demo_documents)
    assert report.indexed == len(demo_documents)
    searcher = HybridSearcher(qdrant_client, collection=collection_name, embedder=demo_embedder)
    cheap = models.Filter(must=[models.FieldCondition(key="price", range=models.Range(lte=120))])
    for text in QUERIES:
        vector = demo_embedder.embed_texts([text])[0].tolist()
        ours = [h.id for h in searcher.search(SearchRequest(text=text, k=10)).hits]
        assert len(ours) == 10
        assert recipe(qdrant_client, collection_name, text, vector) == ours, text
        filtered = [
            h.id
            for h in searcher.search(
                SearchRequest(text=text, k=10, filters=[FilterCondition(field="price", op="lte", value=120)])
            ).hits
        ]
        assert recipe(qdrant_client, collection_name, text, vector, filter=cheap) == filtered, text
        weighted = SearchRequest(text=text, k=10, weights={"image": 1.0, "text": 0.5, "bm25": 2.0}, rrf_k=20)
        expected = [h.id for h in searcher.search(weighted).hits]
        assert recipe(qdrant_client, collection_name, text, vector, weights=(1.0, 0.5, 2.0), rrf_k=20) == expected


def test_the_library_example_runs(
    qdrant_client: Any,
    collection_name: str,
    demo_embedder: Any,
    demo_documents: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    Indexer(demo_embedder, QdrantBackend(qdrant_client, collection_name)).index(demo_documents)
    code = readme_block(LIBRARY)
    swaps = {
        'QdrantClient(url="http://qdrant:6333")': "client",
        'collection="products"': f"collection={collection_name!r}",
        'OpenClipEmbedder("ViT-B-32", pretrained="laion2b_s34b_b79k")': "embedder",
    }
    for old, new in swaps.items():
        assert old in code, f"README's library example changed: {old!r} is gone (update this test)"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    shutil.copy(demo_documents[0]["images"][0]["path"], tmp_path / "photo.jpg")  # the example's photo.jpg
    exec(compile(code, "README.md (As a library)", "exec"), {"client": qdrant_client, "embedder": demo_embedder})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 10
    titles = {d["title"] for d in demo_documents}
    cheap = {d["id"] for d in demo_documents if d["attributes"]["price"] <= 120}
    for rank, line in enumerate(printed, start=1):
        number, doc_id, _score, _image, _text, _bm25, title = line.split(" ", 6)
        assert int(number) == rank and doc_id in cheap and title in titles
