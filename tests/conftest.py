"""Shared fixtures: the shipped demo model, a small demo catalog, Qdrant clients (embedded or server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clipfuse.demo import demo_model_dir


@pytest.fixture(scope="session")
def demo_embedder() -> Any:
    """The real shipped demo CLIP, on the CPU, loaded once per test session."""
    from clipfuse.embedding.openclip import OpenClipEmbedder

    if not any(demo_model_dir().glob("*.safetensors")):
        pytest.fail(f"the demo model weights are missing from {demo_model_dir()}: run python -m clipfuse.demo.train")
    embedder = OpenClipEmbedder("clipfuse-demo", device="cpu", batch_size=64)
    embedder.load()
    return embedder


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-product synthetic catalog (JSONL + JPEGs) from a seed the demo model never saw."""
    from clipfuse.demo.catalog import write_catalog

    return write_catalog(tmp_path_factory.mktemp("catalog"), n=60, seed=913, image_size=128)


@pytest.fixture(scope="session")
def demo_documents(demo_catalog: Path) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in demo_catalog.read_text().splitlines() if line.strip()]
    for doc in docs:  # absolute paths: documents usable without a base_dir
        for image in doc["images"]:
            image["path"] = str(demo_catalog.parent / image["path"])
    return docs


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Debian Chromium under Playwright for the session's browser tests (tests/browser.py)."""
    from browser import launch_chromium

    with launch_chromium() as instance:
        yield instance


@pytest.fixture(scope="session")
def weak_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second checkpoint: the demo architecture trained for 5 steps by clipfuse.demo.train (deliberately
    weak: the gate must refuse it against the demo model), made once per test session."""
    out = tmp_path_factory.mktemp("weak-model")
    subprocess.run(
        [sys.executable, "-m", "clipfuse.demo.train", "--out", str(out), "--steps", "5", "--eval-n", "50"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.fixture
def qdrant_client(tmp_path: Path) -> Iterator[Any]:
    """qdrant-client against a server when QDRANT_URL is set, else the embedded store in tmp_path."""
    from qdrant_client import QdrantClient

    url = os.environ.get("QDRANT_URL")
    client = (
        QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
        if url
        else QdrantClient(path=str(tmp_path / "q"))
    )
    yield client
    client.close()


@pytest.fixture
def collection_name(qdrant_client: Any) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        if qdrant_client.collection_exists(name):
            qdrant_client.delete_collection(name)
    except Exception:  # the client may be closed by the test
        pass
