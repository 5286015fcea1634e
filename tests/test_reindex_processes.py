"""`clipfuse reindex` as real processes on Qdrant Edge: the gate with a trained second checkpoint, and SIGKILL.

The second model is a checkpoint of the demo architecture made by the project's own training
script with a few steps (cached for the test session): deliberately weak, so the gate must
refuse it against the shipped demo model and accept the demo model against it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "CLIPFUSE_MODEL__DEVICE": "cpu", "CLIPFUSE_BACKEND": "qdrant-edge"}
ENV.pop("CLIPFUSE_MODEL__NAME", None)


def clipfuse(*args: str, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "clipfuse.cli", *args],
        env={**ENV, "COLUMNS": "200", **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"clipfuse {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def _alias(store: Path) -> dict:
    return json.loads((store / "products.alias.json").read_text())


def _contents(store: Path, name: str) -> dict[str, tuple[dict, np.ndarray]]:
    """Every document of the physical index ``name``: payload and image vector."""
    import qdrant_edge as qe

    from clipfuse.plugin.edge import EdgeBackend

    backend = EdgeBackend(store, name)
    shard = backend._require()
    assert shard is not None
    out: dict[str, tuple[dict, np.ndarray]] = {}
    offset = None
    try:
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=256, with_payload=True, with_vector=True)
            )
            for r in records:
                payload = dict(r.payload or {})
                out[str(payload.pop("doc_id"))] = (payload, np.asarray(r.vector["image"], dtype=np.float32))
            if offset is None or not records:
                return out
    finally:
        backend.close()


def test_gate_refuses_a_weak_model_and_accepts_a_good_one_and_back(tmp_path: Path, weak_model: Path) -> None:
    from clipfuse.eval.cli import _demo_inputs

    catalog, _, _ = _demo_inputs(tmp_path, size=120, n_queries=40, text_noise=0.5, seed=0)
    store = tmp_path / "store"
    queries, qrels = tmp_path / "queries.jsonl", tmp_path / "qrels.tsv"
    clipfuse("index", str(catalog), "--model", "clipfuse-demo", "--store", str(store))
    demo_index = _alias(store)["target"]
    gate = ["--gate", str(queries), str(qrels), "--images-root", str(catalog.parent), "--store", str(store)]

    refused = clipfuse("reindex", "--model", f"local-dir:{weak_model}", *gate, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "evaluation gate" in refused.stdout and "RRF k=60 <- gate" in refused.stdout
    assert "gate refused the swap" in refused.stdout
    record = _alias(store)
    assert record["target"] == demo_index and record["building"]  # nothing swapped; the new index is kept

    # forced through (tolerance 1): resumes without re-embedding anything, then swaps
    forced = clipfuse("reindex", "--model", f"local-dir:{weak_model}", *gate, "--tolerance", "1")
    assert "re-embedded 0 documents (120 already there)" in forced.stdout
    record = _alias(store)
    assert record["previous"] == demo_index and record["target"] != demo_index and not record["building"]
    info = clipfuse("info", "--store", str(store)).stdout
    assert f"previous {demo_index}: model clipfuse-demo, 120 documents" in info.replace("\n", " ")
    assert "model local-dir:" in info

    clipfuse("alias", "prune", "--store", str(store))
    accepted = clipfuse("reindex", "--model", "clipfuse-demo", *gate)
    assert "gate passed" in accepted.stdout and "swapped" in accepted.stdout
    assert _alias(store)["target"] == demo_index


def test_sigkill_half_way_then_rerun_resumes_with_the_same_result(tmp_path: Path, weak_model: Path) -> None:
    from clipfuse.demo.catalog import write_catalog

    catalog = write_catalog(tmp_path / "catalog", n=300, seed=913, image_size=256)
    store = tmp_path / "store"
    clipfuse("index", str(catalog), "--model", "clipfuse-demo", "--store", str(store), "--no-optimize")
    old = _alias(store)["target"]
    reference_store = tmp_path / "reference"
    shutil.copytree(store, reference_store)
    args = ["reindex", "--model", f"local-dir:{weak_model}", "--images-root", str(catalog.parent)]
    slow = {"CLIPFUSE_BATCH_SIZE": "8", "CLIPFUSE_IMAGES__LOAD_WORKERS": "1"}

    # the same re-index, never interrupted, first: the reference result
    clipfuse(*args, "--store", str(reference_store), **slow)

    # killed on the progress it logs (not on a timer): a third of the way through the copy
    process = subprocess.Popen(
        [sys.executable, "-m", "clipfuse.cli", *args, "--store", str(store)],
        env={**ENV, **slow, "CLIPFUSE_LOG_LEVEL": "INFO"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"re-index: (\d+) of 300 documents done", line)
        if found and int(found.group(1)) >= 100:
            break
    else:
        raise AssertionError("the re-index ended without logging its progress")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    building = _alias(store)["building"]
    assert building, "the re-index never started"
    assert process.returncode == -signal.SIGKILL

    # nothing served from the half-built index: the alias still points at the old one
    record = _alias(store)
    assert record["target"] == old and record["building"] == building
    partial = len(_contents(store, building))
    assert 0 < partial < 300, f"the kill was not half-way ({partial} of 300 documents)"

    rerun = clipfuse(*args, "--store", str(store))
    assert f"re-embedded {300 - partial} documents ({partial} already there)" in rerun.stdout.replace("\n", " ")
    assert _alias(store)["target"] == building

    resumed, reference = _contents(store, building), _contents(reference_store, building)
    assert set(resumed) == set(reference) == set(_contents(store, old))
    for doc_id, (payload, vector) in reference.items():
        assert resumed[doc_id][0] == payload
        np.testing.assert_allclose(resumed[doc_id][1], vector, atol=1e-5)


def test_a_searcher_in_a_loop_sees_no_error_and_switches_model_at_the_swap(
    tmp_path: Path, weak_model: Path, demo_catalog: Path
) -> None:
    """The service's searcher queries in a loop (a thread) while the re-index runs and swaps in the same
    process (an embedded store is open once per process): 0 errors, the old model until the swap,
    the new one within the alias check interval after it."""
    import threading

    from clipfuse.ingest.run import run_index
    from clipfuse.reindex.cli import run_reindex
    from clipfuse.schemas import SearchRequest
    from clipfuse.service.app import Service
    from clipfuse.settings import Settings

    settings = Settings().with_store(tmp_path / "store")
    settings = settings.model_copy(
        update={
            "backend": "qdrant-edge",
            "model": settings.model.model_copy(update={"name": "clipfuse-demo", "pretrained": None, "device": "cpu"}),
            "service": settings.service.model_copy(update={"alias_check_s": 0.1}),
        }
    )
    assert run_index(settings, demo_catalog, show_progress=False).indexed == 60
    service = Service(settings)
    service.start()
    seen: list[tuple[float, str | None]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_loop() -> None:
        request = SearchRequest(text="red dress", k=5)
        while not stop.is_set() and len(seen) < 5000:
            try:
                response = service.search(request, "")
                assert response.hits
                seen.append((time.monotonic(), service.model_id))
            except BaseException as e:
                errors.append(e)
            time.sleep(0.005)

    moments: dict[str, float] = {}
    thread = threading.Thread(target=search_loop, daemon=True)
    thread.start()
    time.sleep(0.3)
    try:
        run_reindex(
            settings,
            model_name=f"local-dir:{weak_model}",
            pretrained=None,
            images_root=demo_catalog.parent,
            show_progress=False,
            root=service.backend,
            on_step=lambda step, job: moments.setdefault(step, time.monotonic()),
        )
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=30)
        service.stop()
    assert not errors, errors[:3]
    swapped = moments["swapped"]
    before = [model for t, model in seen if t < moments["prepared"]]
    during = [model for t, model in seen if moments["prepared"] <= t < swapped]
    after = [model for t, model in seen if t > swapped + 0.5]
    assert before and during and after, (len(before), len(during), len(after))
    assert set(before) == set(during) == {"clipfuse-demo"}  # nothing served from the half-built index
    assert set(after) == {f"local-dir:{weak_model}"}
    models = [model for _, model in seen]
    switches = sum(1 for a, b in itertools.pairwise(models) if a != b)
    assert switches == 1
