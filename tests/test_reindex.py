"""Aliases, dual writes and blue/green re-indexing on real engines (Qdrant Edge, qdrant-client local mode).

The fast tests here use two small deterministic embedders (``ToyEmbedder``: a real
implementation of the embedder protocol, vectors from the texts' words and the images'
colours) so that two models with different spaces exist without training one; the slow
tests in ``test_reindex_processes.py`` use the demo model and a second checkpoint made by
the project's training script.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL.Image import Image

from clipfuse.embedding import l2_normalize
from clipfuse.errors import ConfigurationError
from clipfuse.images import ImageLoader
from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin.edge import EdgeBackend
from clipfuse.plugin.protocol import Aliased, AliasRecord, Backend, Scrollable, physical_name
from clipfuse.plugin.qdrant import QdrantBackend
from clipfuse.reindex import AliasWriter, Reindexer, SwapRefused, prune, rollback


class ToyEmbedder:
    """Deterministic vectors: words hashed into ``dim`` buckets, images by their mean colour (salted by model)."""

    def __init__(self, model_id: str, dim: int) -> None:
        self._model_id, self._dim = model_id, dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        return self._model_id

    def _bucket(self, token: str) -> int:
        return int(hashlib.sha1(f"{self._model_id}:{token}".encode()).hexdigest(), 16) % self._dim

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, self._bucket(word)] += 1.0
            out[row, self._bucket("")] += 0.01
        return l2_normalize(out)

    def embed_images(self, images: Sequence[Image]) -> np.ndarray:
        out = np.zeros((len(images), self._dim), dtype=np.float32)
        for row, image in enumerate(images):
            mean = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)
            for channel, value in enumerate(mean):
                out[row, self._bucket(f"c{channel}:{int(value) // 32}")] += 1.0
        return l2_normalize(out)


MODEL_A, MODEL_B = ToyEmbedder("toy-a", 32), ToyEmbedder("toy-b", 48)
EMBEDDERS = {e.model_id: e for e in (MODEL_A, MODEL_B)}


@pytest.fixture(params=["qdrant-edge", "qdrant-local"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend on the alias ``products`` of a fresh store (the engine's root for aliases)."""
    if request.param == "qdrant-edge":
        backend: Backend = EdgeBackend(tmp_path / "edge", "products")
    else:
        from qdrant_client import QdrantClient

        backend = QdrantBackend(QdrantClient(path=str(tmp_path / "q")), "products")
    yield backend
    backend.close()


def _reopen(root: Backend) -> Backend:
    """A new backend on the name ``products`` of the same store (the old one closed)."""
    if isinstance(root, EdgeBackend):
        return EdgeBackend(root.path, "products")
    from qdrant_client import QdrantClient

    assert isinstance(root, QdrantBackend)
    return QdrantBackend(QdrantClient(path=str(root.client._client.location)), "products")  # type: ignore[attr-defined]


def _indexer_for(base_dir: Path) -> Any:
    def make(backend: Backend, model_id: str | None) -> Indexer:
        return Indexer(EMBEDDERS[model_id or "toy-a"], backend, loader=ImageLoader(base_dir=base_dir), batch_size=16)

    return make


def _writer(root: Backend, base_dir: Path) -> AliasWriter:
    return AliasWriter(root, "products", indexer_for=_indexer_for(base_dir), default_model="toy-a", ttl_s=0)


def _docs(catalog: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]


def _contents(backend: Backend) -> dict[str, dict[str, Any]]:
    assert isinstance(backend, Scrollable)
    out: dict[str, dict[str, Any]] = {}
    offset: Any = None
    while True:
        page, offset = backend.scroll_payloads(offset, 64)
        out.update(page)
        if offset is None or not page:
            return out


def test_physical_name_is_stable_and_valid_everywhere() -> None:
    assert physical_name("products", "clipfuse-demo") == physical_name("products", "clipfuse-demo")
    assert physical_name("products", "ViT-B-32/laion2b_s34b_b79k").startswith("products--vit-b-32-laion2b-s34b-b79k-")
    name = physical_name("products", "local-dir:/models/My Model v2")
    assert name.startswith("products--my-model-v2-") and name == name.lower()
    assert physical_name("products", "a") != physical_name("products", "b")
    record = AliasRecord("products", "p1", previous="p0", building="p2")
    assert record.live == ("p1", "p2", "p0")
    assert AliasRecord.from_json(record.to_json()) == record


def test_a_fresh_index_is_created_behind_an_alias(root: Backend, demo_catalog: Path) -> None:
    assert isinstance(root, Aliased)
    writer = _writer(root, demo_catalog.parent)
    report = writer.index(_docs(demo_catalog)[:20])
    assert report.indexed == 20
    record = root.read_alias("products")
    assert record == AliasRecord("products", physical_name("products", "toy-a"))
    assert root.index_exists(record.target) and not root.index_exists("products")
    target = root.open_index(record.target)
    assert target.count() == 20
    info = target.index_info()
    assert info is not None and info.model == "toy-a" and info.dim == 32
    writer.close()
    # the alias name itself opens the index it points at (a backend resolves the alias when it is made)
    fresh = _reopen(root)
    info = fresh.index_info()
    assert info is not None and info.model == "toy-a" and fresh.count() == 20
    fresh.close()


def test_a_plain_index_keeps_working_and_is_adopted(root: Backend, demo_catalog: Path) -> None:
    """An index made before aliases: written and searched as it is; the first re-index adopts it."""
    assert isinstance(root, Aliased)
    plain = Indexer(MODEL_A, root, loader=ImageLoader(base_dir=demo_catalog.parent), batch_size=16)
    assert plain.index(_docs(demo_catalog)[:12]).indexed == 12
    assert root.read_alias("products") is None and root.index_exists("products")
    writer = _writer(root, demo_catalog.parent)
    assert writer.index(_docs(demo_catalog)[12:15]).indexed == 3  # through the writer: still the plain index
    assert root.read_alias("products") is None and root.count() == 15

    job = Reindexer(root, "products", model_id="toy-b", indexer_for=_indexer_for(demo_catalog.parent))
    plan = job.plan()
    assert plan.adopt and plan.source == physical_name("products", "toy-a")
    job.prepare()
    record = job.record()
    assert record is not None and record.target == physical_name("products", "toy-a")
    assert record.building == physical_name("products", "toy-b")
    assert not root.index_exists("products") and root.open_index(record.target).count() == 15
    job.close()
    writer.close()


def test_reindex_with_writes_during_it_then_swap_rollback_prune(root: Backend, demo_catalog: Path) -> None:
    assert isinstance(root, Aliased)
    docs = _docs(demo_catalog)
    base = demo_catalog.parent
    writer = _writer(root, base)
    writer.index(docs[:40])
    old_name = physical_name("products", "toy-a")
    new_name = physical_name("products", "toy-b")

    job = Reindexer(root, "products", model_id="toy-b", indexer_for=_indexer_for(base), page_size=8)
    job.prepare()
    assert [name for name, _ in writer.live(refresh=True)] == [old_name, new_name]

    changed = {**docs[3], "title": "renamed during the re-index"}
    writes = {"done": False}

    def during(report: Any, n: int) -> None:  # writes arriving while the copy runs
        if not writes["done"]:
            writes["done"] = True
            writer.index_batch([changed, docs[40], docs[41]])
            writer.delete([docs[5]["id"], docs[40]["id"]])

    report, _skipped = job.copy(on_batch=during)
    assert writes["done"] and not report.rejected
    verified = job.verify()
    assert verified.ok, verified
    # until the swap, searches and the alias stay on the old index
    assert root.read_alias("products").target == old_name  # type: ignore[union-attr]
    moved = job.swap(verified)
    assert moved == AliasRecord("products", new_name, previous=old_name)
    job.close()

    expected = {d["id"] for d in docs[:42]} - {docs[5]["id"], docs[40]["id"]}
    new, old = root.open_index(new_name), root.open_index(old_name)
    new_docs, old_docs = _contents(new), _contents(old)
    assert set(new_docs) == expected == set(old_docs)
    assert new_docs == old_docs  # id by id, payload by payload
    assert new_docs[docs[3]["id"]]["title"] == "renamed during the re-index"
    assert new.index_info().model == "toy-b" and new.index_info().dim == 48  # type: ignore[union-attr]

    # after the swap, writes still reach the previous index (a rollback loses nothing)
    writer.index_batch([{**docs[7], "title": "after the swap"}])
    assert _contents(old)[docs[7]["id"]]["title"] == "after the swap"
    back = rollback(root, "products")
    assert back == AliasRecord("products", old_name, previous=new_name)
    assert _contents(root.open_index(old_name)) == _contents(root.open_index(new_name))
    rollback(root, "products")
    kept, dropped = prune(root, "products")
    assert dropped == old_name and kept == AliasRecord("products", new_name)
    assert not root.index_exists(old_name)
    assert [name for name, _ in writer.live(refresh=True)] == [new_name]
    writer.close()


def test_a_rerun_resumes_without_re_embedding(root: Backend, demo_catalog: Path) -> None:
    docs = _docs(demo_catalog)
    base = demo_catalog.parent
    writer = _writer(root, base)
    writer.index(docs)
    job = Reindexer(root, "products", model_id="toy-b", indexer_for=_indexer_for(base), page_size=16)
    job.prepare()
    new = job.indexer().backend
    new.upsert([])  # the index exists
    # a first run that stopped after some documents: copy them as a partial run would
    partial = Indexer(MODEL_B, new, loader=ImageLoader(base_dir=base), batch_size=16)
    partial.index([docs[i] for i in range(0, 25)])
    job.close()

    again = Reindexer(root, "products", model_id="toy-b", indexer_for=_indexer_for(base), page_size=16)
    plan = again.plan()
    assert plan.resumed and plan.target_documents == 25
    again.prepare()
    report, skipped = again.copy()
    assert skipped == 25 and report.indexed == len(docs) - 25
    assert again.verify().ok
    again.close()
    writer.close()


def test_inline_images_are_refused_with_a_reason_and_block_the_swap(root: Backend, demo_catalog: Path) -> None:
    import base64

    base = demo_catalog.parent
    docs = _docs(demo_catalog)[:6]
    inline = {
        "id": "inline-1",
        "title": "an inline photo",
        "images": [{"data": base64.b64encode((base / docs[0]["images"][0]["path"]).read_bytes()).decode()}],
    }
    writer = _writer(root, base)
    assert writer.index([*docs, inline]).indexed == 7
    job = Reindexer(root, "products", model_id="toy-b", indexer_for=_indexer_for(base))
    job.prepare()
    report, _ = job.copy()
    assert [(r.id, r.code) for r in report.rejected] == [("inline-1", "image_not_kept")]
    verified = job.verify()
    assert verified.missing == ["inline-1"] and not verified.ok
    with pytest.raises(SwapRefused, match="1 missing"):
        job.swap(verified)
    # sent again (by path) while the re-index is prepared: written to both, then the swap goes through
    writer.index_batch([{**inline, "images": docs[0]["images"]}])
    verified = job.verify()
    assert verified.ok
    job.swap(verified)
    job.close()
    writer.close()


def test_reindex_refuses_what_it_cannot_do(root: Backend, demo_catalog: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Reindexer(root, "products", model_id="toy-b", indexer_for=_indexer_for(demo_catalog.parent)).plan()
    writer = _writer(root, demo_catalog.parent)
    writer.index(_docs(demo_catalog)[:4])
    with pytest.raises(ConfigurationError, match="nothing to re-index"):
        Reindexer(root, "products", model_id="toy-a", indexer_for=_indexer_for(demo_catalog.parent)).plan()
    writer.close()


def test_an_explicit_other_model_is_refused_by_the_writer(root: Backend, demo_catalog: Path) -> None:
    _writer(root, demo_catalog.parent).index(_docs(demo_catalog)[:3])
    strict = AliasWriter(
        root,
        "products",
        indexer_for=_indexer_for(demo_catalog.parent),
        default_model="toy-b",
        explicit_model="toy-b",
        ttl_s=0,
    )
    with pytest.raises(ConfigurationError, match="clipfuse reindex --model toy-b"):
        strict.index_batch(_docs(demo_catalog)[3:4])


@pytest.mark.parametrize("write", ["index_batch", "delete", "index"])
def test_a_write_that_began_before_the_reindex_and_ends_after_its_swap_is_not_lost(
    root: Backend, demo_catalog: Path, write: str
) -> None:
    """The stale-writer window: a writer read the alias before ``prepare`` (only the old index is live for
    it) and its write lands on the old index after the re-index verified and swapped. The writer re-reads
    the alias after each write, so the write reaches the new index too."""
    docs = _docs(demo_catalog)[:20]
    base = demo_catalog.parent
    new_name = physical_name("products", "toy-b")
    hold: dict[str, Any] = {}

    class Slow(Indexer):
        """The old index's indexer: the whole re-index runs while this write is on its way."""

        def _run_reindex_first(self) -> None:
            hook = hold.pop("hook", None)
            if hook is not None and self.embedder.model_id == "toy-a":
                hook()

        def index_batch(self, raws: Any) -> Any:
            self._run_reindex_first()
            return super().index_batch(raws)

        def index(self, documents: Any, *, on_batch: Any = None) -> Any:
            self._run_reindex_first()
            return super().index(documents, on_batch=on_batch)

    def make(backend: Backend, model_id: str | None) -> Indexer:
        return Slow(EMBEDDERS[model_id or "toy-a"], backend, loader=ImageLoader(base_dir=base), batch_size=4)

    setup = _writer(root, base)
    setup.index(docs[:15])
    setup.close()
    root = _reopen(root)
    # a writer whose view of the alias is fresh now and stays cached for an hour
    writer = AliasWriter(root, "products", indexer_for=make, default_model="toy-a", ttl_s=3600)
    [(old_name, old_indexer)] = writer.live()
    assert old_name == physical_name("products", "toy-a")
    engine_delete = old_indexer.backend.delete

    def delete_late(ids: Any) -> None:  # deletes go to the engine directly (no model needed)
        hook = hold.pop("hook", None)
        if hook is not None:
            hook()
        engine_delete(ids)

    old_indexer.backend.delete = delete_late  # type: ignore[method-assign]

    def reindex() -> None:
        job = Reindexer(root, "products", model_id="toy-b", indexer_for=_indexer_for(base), page_size=8)
        job.prepare()
        job.copy()
        verified = job.verify()
        assert verified.ok
        job.swap(verified)
        job.close()

    hold["hook"] = reindex
    if write == "index_batch":
        writer.index_batch([{**docs[2], "title": "written late"}, docs[15]])
    elif write == "index":
        writer.index([{**docs[2], "title": "written late"}, *docs[15:20]])
    else:
        writer.delete([docs[2]["id"], docs[3]["id"]])
    assert "hook" not in hold, "the re-index did not run during the write"
    assert root.read_alias("products").target == new_name  # type: ignore[union-attr]
    new = _contents(root.open_index(new_name))
    old = _contents(root.open_index(old_name))
    assert new == old  # id by id, payload by payload
    if write == "delete":
        assert docs[2]["id"] not in new and docs[3]["id"] not in new and len(new) == 13
    else:
        assert new[docs[2]["id"]]["title"] == "written late"
        assert set(new) == {d["id"] for d in docs[: 16 if write == "index_batch" else 20]}
    writer.close()
