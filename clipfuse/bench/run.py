"""``clipfuse bench``: throughput of the ingest path and latency of the query path, in one run.

Every figure comes from the same process, the same images and the same model, measured side by
side (on a shared machine only ratios taken this way mean anything):

- **model only**: the image tower on preprocessed tensors already on the host (and the text
  tower on token ids already in memory): the ceiling.
- **pipeline**: JPEG files on disk -> L2-normalised image vectors through the production
  :class:`~clipfuse.ingest.pipeline.Indexer` (reduced JPEG decoding, decode + resize in the
  loader's threads overlapped with the forward, uint8 batching; PIL decoding, device decoding
  off), upsert to a backend that discards the vectors.
- **ingest**: the whole ``Indexer`` as production runs it (images + texts + BM25 + upsert to an
  embedded Qdrant Edge store in a temporary folder; on CUDA the JPEGs are decoded on the device),
  documents per second.
- **baseline**, clip-retrieval style: a torch ``DataLoader`` whose worker processes open each
  file with PIL and apply open_clip's preprocess transform, then the forward (fp16 on CUDA,
  fp32 on the CPU) and L2 normalisation.
- text tower (``embed_texts``) and BM25 throughput, and the latency of a text hybrid query
  (encode + retrieve + fuse) on an Edge store of ``query_docs`` documents whose dense vectors
  are synthetic (random unit vectors; the BM25 vectors are real).

Each measured phase runs ``repeats`` times in turns (model, pipeline, baseline, ...) and the
best turn counts, so a burst of another process's work hurts one turn, not the comparison.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipfuse.bench.images import synthetic_jpegs

__all__ = ["BenchConfig", "run_bench", "synthetic_texts"]

log = logging.getLogger(__name__)

#: called with (phase, done, total) while a phase runs
Progress = Callable[[str, int, int], None]


@dataclass
class BenchConfig:
    model: str = "ViT-B-32"
    pretrained: str | None = None
    device: str = "auto"
    #: None: bf16 on CUDA, fp32 on the CPU
    precision: str | None = None
    #: images / texts per forward pass
    batch_size: int = 64
    #: documents per ingest batch (None: 4 x batch_size, at least 64)
    ingest_batch: int | None = None
    images: int = 256
    #: distinct generated photos (the rest repeat them; decoding costs the same)
    unique_images: int = 64
    #: the baseline DataLoader's worker processes
    workers: int = 2
    #: the Indexer's loader threads (read / decode / resize)
    load_workers: int = 8
    reduced_jpeg_decode: bool = True
    ingest: bool = True
    baseline: bool = True
    texts: int = 512
    query_docs: int = 10_000
    queries: int = 100
    repeats: int = 2
    seed: int = 5
    #: also run the device-decode pipeline (JPEG bytes decoded on the model's device, issue 16)
    device_decode: bool = True
    #: text paths the query phase times side by side (clipfuse.bench.query.ENCODERS)
    query_encoders: tuple[str, ...] = ("torch", "torch-1t", "onnx", "onnx-int8")
    #: also time the queries while a spinning process loads one core
    query_busy_core: bool = True


_WORDS = {
    "brand": ["Nordkap", "Alder", "Mistral", "Oakline", "Veloce", "Brisa", "Tundra", "Lumen"],
    "color": ["red", "blue", "black", "white", "green", "beige", "navy", "grey", "pink", "olive"],
    "pattern": ["striped", "checked", "solid", "dotted", "floral", "plaid"],
    "material": ["cotton", "linen", "wool", "leather", "denim", "canvas", "silk"],
    "category": ["t-shirt", "dress", "scarf", "ankle boots", "backpack", "jacket", "sneakers", "hat"],
}


def synthetic_texts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Shop-like title / caption / description triples (~50 CLIP tokens together)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = {key: str(rng.choice(values)) for key, values in _WORDS.items()}
        price = rng.uniform(9, 300)
        out.append(
            {
                "title": f"{w['brand']} {w['color']} {w['pattern']} {w['material']} {w['category']}",
                "caption": f"A {w['pattern']} {w['color']} {w['category']} in {w['material']}",
                "description": (
                    f"This {w['category']} by {w['brand']} is made of {w['material']} with a {w['pattern']} "
                    f"{w['color']} finish. Price: {price:.2f}. In stock and ready to ship."
                ),
            }
        )
    return out


class _DiscardBackend:
    """A backend that keeps nothing: the pipeline phase measures JPEG bytes -> vectors."""

    lexical = "native"  # no BM25 on this phase

    def __init__(self) -> None:
        self.vectors = 0

    def ensure_schema(self, *, dim: int, model: str | None) -> None:
        pass

    def index_info(self) -> None:
        return None

    def register_fields(self, fields: Mapping[str, Any]) -> None:
        pass

    def upsert(self, documents: Sequence[Any]) -> dict[str, str]:
        self.vectors += sum(1 for d in documents if d.image_vector is not None)
        return {}


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the baseline's DataLoader workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class _Rate:
    """Items per wall second, and items per CPU second (all threads and child processes): on a machine
    shared with other work the second is the steadier measure of how much work an item costs."""

    wall: float
    cpu: float


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()

    def rate(self, items: int) -> _Rate:
        wall, cpu = time.perf_counter() - self.wall, _cpu_seconds() - self.cpu
        return _Rate(items / wall, items / cpu if cpu > 0 else float("inf"))


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@contextmanager
def _tempdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class _Bench:
    def __init__(self, config: BenchConfig, progress: Progress | None) -> None:
        import torch

        from clipfuse.embedding.openclip import OpenClipEmbedder

        self.config = config
        self.progress = progress or (lambda phase, done, total: None)
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.precision = config.precision or ("bf16" if self.device.type == "cuda" else "fp32")
        self.embedder = OpenClipEmbedder(
            config.model,
            pretrained=config.pretrained,
            device=device,
            precision=self.precision,
            batch_size=config.batch_size,
        )
        self.embedder.load()
        self.ingest_batch = config.ingest_batch or max(64, 4 * config.batch_size)

    # -- phases -------------------------------------------------------------------------
    def model_only_images(self, pixels: Any) -> _Rate:
        """Images per second of the image tower on preprocessed host tensors (copy to the device included)."""
        n, b = self.config.images, self.config.batch_size
        batches = max(3, n // b)
        for _ in range(2):  # warm-up: the first passes of a shape pick kernels
            self.embedder.embed_pixels(pixels)
        _sync(self.device)
        clock = _Clock()
        for i in range(batches):
            self.embedder.embed_pixels(pixels)
            self.progress("model only", (i + 1) * b, batches * b)
        _sync(self.device)
        return clock.rate(batches * b)

    def model_only_texts(self, tokens: Any) -> _Rate:
        """Texts per second of the text tower on token ids in memory (the production trimming included)."""
        b = self.config.batch_size
        for _ in range(2):
            self.embedder.embed_tokens(tokens[:b])
        clock = _Clock()
        for start in range(0, len(tokens), b):
            self.embedder.embed_tokens(tokens[start : start + b])
        _sync(self.device)
        return clock.rate(len(tokens))

    def _indexer(self, backend: Any, *, device_decode: bool | None = None) -> Any:
        """The production Indexer; ``device_decode`` as its own (None: on when the model runs on CUDA)."""
        from clipfuse.images import ImageLoader
        from clipfuse.ingest.pipeline import Indexer

        return Indexer(
            self.embedder,
            backend,
            loader=ImageLoader(),
            batch_size=self.ingest_batch,
            load_workers=self.config.load_workers,
            reduced_jpeg_decode=self.config.reduced_jpeg_decode,
            device_decode=device_decode,
        )

    def _run_indexer(self, indexer: Any, docs: list[dict[str, Any]], phase: str) -> tuple[_Rate, dict[str, float]]:
        done = 0

        def on_batch(report: Any, n: int) -> None:
            nonlocal done
            done += n
            self.progress(phase, done, len(docs))

        clock = _Clock()
        report = indexer.index(docs, on_batch=on_batch)
        _sync(self.device)
        rate = clock.rate(len(docs))
        indexer.close()
        if report.indexed != len(docs):
            raise RuntimeError(f"{phase}: {len(docs) - report.indexed} documents rejected: {report.rejected[:3]}")
        stages = {k: round(v, 4) for k, v in indexer.stage_totals.items()}
        return rate, stages

    def pipeline(self, files: list[Path]) -> tuple[_Rate, dict[str, float]]:
        backend = _DiscardBackend()
        docs = [{"id": f"i{i}", "images": [{"path": str(p)}]} for i, p in enumerate(files)]
        # the CPU-decode pipeline (PIL in the loader's threads); the ingest phase decodes as production does
        rate, stages = self._run_indexer(self._indexer(backend, device_decode=False), docs, "pipeline")
        if backend.vectors != len(files):
            raise RuntimeError(f"pipeline produced {backend.vectors} vectors for {len(files)} images")
        return rate, stages

    def device_pipeline(self, files: list[Path]) -> tuple[_Rate, dict[str, float]]:
        """JPEG files -> vectors with the decode on the device (nvjpeg on CUDA, libjpeg via torchvision
        on the CPU) and one batched resize per image size, batch n+1 prepared while n runs the forward."""
        from clipfuse.embedding.gpu_decode import DeviceJpegEmbedder

        decoder = DeviceJpegEmbedder(self.embedder)
        b = self.config.batch_size
        read = 0.0

        def chunks() -> Iterator[list[bytes]]:
            nonlocal read
            for start in range(0, len(files), b):
                t0 = time.perf_counter()
                chunk = [p.read_bytes() for p in files[start : start + b]]
                read += time.perf_counter() - t0
                yield chunk

        done, on_device = 0, 0
        clock = _Clock()
        for batch in decoder.embed_batches(chunks()):
            if batch.failed:
                raise RuntimeError(
                    f"device pipeline: {len(batch.failed)} images failed: {list(batch.failed.values())[:3]}"
                )
            done += len(batch.rows)
            on_device += batch.on_device
            self.progress("device decode", done, len(files))
        _sync(self.device)
        rate = clock.rate(len(files))
        return rate, {"read": round(read, 4), "decoded_on_device_share": round(on_device / max(1, done), 4)}

    def ingest(self, files: list[Path], texts: list[dict[str, str]], store: Path) -> tuple[_Rate, dict[str, float]]:
        from clipfuse.plugin.edge import EdgeBackend

        docs = [
            {"id": f"d{i}", "images": [{"path": str(p)}], **texts[i % len(texts)], "attributes": {"n": i}}
            for i, p in enumerate(files)
        ]
        backend = EdgeBackend(store, f"bench{time.monotonic_ns()}")
        try:
            return self._run_indexer(self._indexer(backend), docs, "ingest")
        finally:
            backend.close()

    def baseline(self, files: list[Path]) -> _Rate:
        """clip-retrieval style: DataLoader workers decode + preprocess, then an fp16 (GPU) / fp32 (CPU) forward."""
        import torch
        from torch.utils.data import DataLoader

        from clipfuse.embedding import l2_normalize

        model = self._baseline_model
        loader: DataLoader[Any] = DataLoader(
            _FileDataset(files, self._baseline_preprocess),  # type: ignore[arg-type]
            batch_size=self.config.batch_size,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
        )
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        done = 0
        clock = _Clock()
        with torch.inference_mode():
            for batch in loader:
                features = model.encode_image(batch.to(self.device, dtype=dtype, non_blocking=True))
                l2_normalize(features.float().cpu().numpy())
                done += len(batch)
                self.progress("baseline", done, len(files))
        _sync(self.device)
        del loader  # workers end and are reaped, so their CPU time counts
        return clock.rate(len(files))

    def load_baseline_model(self) -> None:
        import open_clip

        from clipfuse.embedding.openclip import resolve_model_name

        resolved = resolve_model_name(self.config.model)
        pretrained = None if resolved.startswith(("local-dir:", "hf-hub:")) else self.config.pretrained
        model, _, preprocess = open_clip.create_model_and_transforms(
            resolved,
            pretrained=pretrained,
            precision="fp16" if self.device.type == "cuda" else "fp32",
            device=self.device,
        )
        self._baseline_model = model.eval()
        self._baseline_preprocess = preprocess

    def query_latency(self, store: Path, texts: list[dict[str, str]]) -> dict[str, Any]:
        from clipfuse.bench.query import build_store, query_latency
        from clipfuse.plugin.edge import EdgeBackend

        backend = EdgeBackend(store / "edge", f"query{time.monotonic_ns()}")
        try:
            build = build_store(
                backend, self.embedder.dim, self.config.query_docs, texts, self.config.seed, self.progress
            )
            backend.warm_ids()
            result = query_latency(
                self.embedder,
                backend,
                texts,
                _WORDS,
                queries=self.config.queries,
                seed=self.config.seed,
                encoders=self.config.query_encoders,
                busy_core=self.config.query_busy_core,
                cache_dir=store / "onnx",
                progress=self.progress,
            )
            return result | {"documents": self.config.query_docs, "store_build_s": round(build, 2)}
        finally:
            backend.close()


class _FileDataset:
    """What clip-retrieval's reader does per item: open the file with PIL, RGB, preprocess."""

    def __init__(self, files: list[Path], preprocess: Any) -> None:
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return self.preprocess(image.convert("RGB"))


@dataclass
class _Best:
    """The best (highest) throughput of several turns, with the stage figures of that turn."""

    rate: float = 0.0
    cpu_rate: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    turns: list[float] = field(default_factory=list)

    def add(self, rate: _Rate, stages: dict[str, float] | None = None) -> None:
        self.turns.append(round(rate.wall, 3))
        self.cpu_rate = max(self.cpu_rate, rate.cpu)
        if rate.wall > self.rate:
            self.rate, self.stages = rate.wall, stages or {}


def _stage_breakdown(stages: dict[str, float], items: int) -> dict[str, Any]:
    """Milliseconds per item per stage; the pool's stages are busy time summed over its threads."""
    return {name: round(seconds * 1000 / items, 3) for name, seconds in sorted(stages.items())}


def run_bench(config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run every phase and return the figures (see the module doc); JSON-serialisable."""
    import torch

    from clipfuse.images import ImageLoader

    wall = time.perf_counter()
    load_before = _load_average()
    bench = _Bench(config, progress)
    embedder = bench.embedder
    n = config.images
    blobs = synthetic_jpegs(min(n, max(1, config.unique_images)), seed=config.seed)
    texts = synthetic_texts(max(config.texts, 64), seed=config.seed)
    with _tempdir("clipfuse-bench-") as folder:
        files = []
        for i in range(n):
            path = folder / f"img{i:06d}.jpg"
            path.write_bytes(blobs[i % len(blobs)])
            files.append(path)
        loader = ImageLoader()
        reference = [embedder.preprocess(loader.decode(b)) for b in blobs[: config.batch_size]]
        while len(reference) < config.batch_size:
            reference += reference[: config.batch_size - len(reference)]
        pixels = torch.stack(reference)
        joined = [f"{t['title']}\n{t['caption']}\n{t['description']}" for t in texts[: config.texts]]
        tokens = embedder.tokenize(joined)
        if config.baseline:
            bench.load_baseline_model()

        model_img, model_txt, pipe, ingest, base, dev = _Best(), _Best(), _Best(), _Best(), _Best(), _Best()
        for _ in range(max(1, config.repeats)):
            model_img.add(bench.model_only_images(pixels))
            model_txt.add(bench.model_only_texts(tokens))
            pipe.add(*bench.pipeline(files))
            if config.device_decode:
                dev.add(*bench.device_pipeline(files))
            if config.baseline:
                base.add(bench.baseline(files))
            if config.ingest:
                with _tempdir("clipfuse-bench-store-") as store:
                    ingest.add(*bench.ingest(files, texts, store))

        # text tower through embed_texts (tokenisation included) and BM25
        started = time.perf_counter()
        embedder.embed_texts(joined)
        _sync(bench.device)
        text_rate = len(joined) / (time.perf_counter() - started)
        from clipfuse.plugin.bm25 import Bm25Encoder

        bm25 = Bm25Encoder()
        started = time.perf_counter()
        bm25.encode_documents(joined)
        bm25_rate = len(joined) / (time.perf_counter() - started)

        query = None
        if config.query_docs > 0 and config.queries > 0:
            with _tempdir("clipfuse-bench-query-") as store:
                query = bench.query_latency(store, texts)

    sizes = sorted({f"{w}x{h}" for w, h in _sizes_of(blobs)})
    per_doc_model = 1.0 / (1.0 / model_img.rate + 1.0 / model_txt.rate)
    per_doc_model_cpu = 1.0 / (1.0 / model_img.cpu_rate + 1.0 / model_txt.cpu_rate)
    result: dict[str, Any] = {
        "config": asdict(config)
        | {
            "device_resolved": str(bench.device),
            "precision_resolved": bench.precision,
            "ingest_batch": bench.ingest_batch,
        },
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": _load_average(),
            "gpu": torch.cuda.get_device_name(bench.device) if bench.device.type == "cuda" else None,
            "image_sizes": sizes,
            "mean_jpeg_kb": round(sum(map(len, blobs)) / len(blobs) / 1024, 1),
            "model_input": embedder.image_size,
        },
        "throughput": {
            "model_only_images_per_s": round(model_img.rate, 3),
            "model_only_texts_per_s": round(model_txt.rate, 3),
            "model_only_documents_per_s": round(per_doc_model, 3),
            "pipeline_images_per_s": round(pipe.rate, 3),
            "device_pipeline_images_per_s": round(dev.rate, 3) if config.device_decode else None,
            "baseline_images_per_s": round(base.rate, 3) if config.baseline else None,
            "ingest_documents_per_s": round(ingest.rate, 3) if config.ingest else None,
            "embed_texts_per_s": round(text_rate, 3),
            "bm25_texts_per_s": round(bm25_rate, 3),
        },
        "per_cpu_second": {
            "model_only_images": round(model_img.cpu_rate, 3),
            "model_only_documents": round(per_doc_model_cpu, 3),
            "pipeline_images": round(pipe.cpu_rate, 3),
            "device_pipeline_images": round(dev.cpu_rate, 3) if config.device_decode else None,
            "baseline_images": round(base.cpu_rate, 3) if config.baseline else None,
            "ingest_documents": round(ingest.cpu_rate, 3) if config.ingest else None,
        },
        "cpu_ratios": {
            "pipeline_vs_model_only": round(pipe.cpu_rate / model_img.cpu_rate, 4),
            "pipeline_vs_baseline": round(pipe.cpu_rate / base.cpu_rate, 4) if config.baseline else None,
            "device_pipeline_vs_baseline": (
                round(dev.cpu_rate / base.cpu_rate, 4) if config.baseline and config.device_decode else None
            ),
            "ingest_vs_model_only_documents": round(ingest.cpu_rate / per_doc_model_cpu, 4) if config.ingest else None,
        },
        "turns": {
            "model_only_images": model_img.turns,
            "model_only_texts": model_txt.turns,
            "pipeline": pipe.turns,
            "device_pipeline": dev.turns,
            "baseline": base.turns,
            "ingest": ingest.turns,
        },
        "ratios": {
            "pipeline_vs_model_only": round(pipe.rate / model_img.rate, 4),
            "pipeline_vs_baseline": round(pipe.rate / base.rate, 4) if config.baseline else None,
            "device_pipeline_vs_model_only": round(dev.rate / model_img.rate, 4) if config.device_decode else None,
            "device_pipeline_vs_baseline": (
                round(dev.rate / base.rate, 4) if config.baseline and config.device_decode else None
            ),
            "ingest_vs_model_only_documents": round(ingest.rate / per_doc_model, 4) if config.ingest else None,
        },
        "stages_ms_per_image": {
            "pipeline": _stage_breakdown(pipe.stages, n),
            "ingest": _stage_breakdown(ingest.stages, n) if config.ingest else None,
        },
        "device_pipeline": dev.stages if config.device_decode else None,
        "query": query,
        "seconds": None,
    }
    result["seconds"] = round(time.perf_counter() - wall, 1)
    return result


def _sizes_of(blobs: list[bytes]) -> Iterator[tuple[int, int]]:
    import io

    from PIL import Image

    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            yield image.size
