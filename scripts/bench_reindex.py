"""Re-index throughput against `clipfuse index` on the same catalog, in the same run.

    python scripts/bench_reindex.py --n 400 --steps 5

Generates the demo catalog, trains a second checkpoint of the same architecture with the
project's training script (a few steps: the cost per document is the architecture's, not
the weights'), indexes the catalog with the demo model (`clipfuse index`'s in-process path,
Qdrant Edge) and re-indexes it into the second model (`clipfuse reindex`'s path), and
prints documents per second of each and their ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="index + reindex pairs, side by side")
    args = parser.parse_args()

    from clipfuse.demo.catalog import write_catalog
    from clipfuse.ingest.run import run_index
    from clipfuse.reindex.cli import run_reindex
    from clipfuse.settings import Settings

    work = args.dir or Path(tempfile.mkdtemp(prefix="clipfuse-bench-reindex-"))
    catalog = write_catalog(work / "catalog", n=args.n, seed=913, image_size=args.image_size)
    second = work / "second-model"
    if not (second / "open_clip_model.safetensors").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "clipfuse.demo.train",
                "--out",
                str(second),
                "--steps",
                str(args.steps),
                "--eval-n",
                "50",
                "--threads",
                "2",
            ],
            check=True,
            capture_output=True,
        )
    base = Settings()
    model = base.model.model_copy(update={"name": "clipfuse-demo", "pretrained": None, "device": "cpu"})
    # the same pipeline as `clipfuse index` (build_writer: what run_index uses), with the model loaded
    # first and the JPEGs in the page cache (a warm-up run); the re-index loads its new model before
    # its copy stage too (timed apart as "load model")
    from clipfuse.factory import build_embedder, build_writer
    from clipfuse.sources import CatalogReader

    embedder = build_embedder(model)
    embedder.load()  # type: ignore[attr-defined]
    warm = base.with_store(work / "warm-up").model_copy(update={"model": model})
    run_index(warm, catalog, show_progress=False, optimize=False)
    print(f"catalog: {args.n} products, {args.image_size}px JPEGs, Qdrant Edge, CPU")
    ratios = []

    def index_into(store: Path) -> tuple[Any, float, Any]:
        settings = base.with_store(store).model_copy(update={"model": model})
        writer = build_writer(settings, base_dir=catalog.parent, embedders={embedder.model_id: embedder})
        try:
            started, cpu = time.perf_counter(), time.process_time()
            report = writer.index(CatalogReader(catalog))
            cpu_seconds[0] = time.process_time() - cpu
            return report, time.perf_counter() - started, settings
        finally:
            writer.close()

    cpu_seconds = [0.0]  # CPU seconds (every thread of this process) of the last index pass
    moments: dict[str, float] = {}
    cpu_ratios = []
    for run in range(1, args.repeat + 1):
        # alternate which one runs first (the machine is shared: load drifts within a run)
        reindex_first = run % 2 == 0
        if reindex_first:
            _, _, settings = index_into(work / f"store-{run}")  # what the re-index reads (untimed)
        else:
            report, index_seconds, settings = index_into(work / f"store-{run}")
        summary = run_reindex(
            settings,
            model_name=f"local-dir:{second}",
            pretrained=None,
            images_root=catalog.parent,
            show_progress=False,
            on_step=lambda step, job: moments.__setitem__(step, time.process_time()),
        )
        reindex_cpu = moments["copied"] - moments["prepared"]
        if reindex_first:
            report, index_seconds, _ = index_into(work / f"store-{run}-index")
        index_rate = report.indexed / index_seconds
        index_cpu = cpu_seconds[0]
        copy_seconds = summary["timings"]["copy"]
        reindex_rate = summary["copied"] / copy_seconds
        total_rate = summary["copied"] / summary["seconds"]
        ratios.append(reindex_rate / index_rate)
        cpu_ratios.append((summary["copied"] / reindex_cpu) / (report.indexed / index_cpu))
        print(f"run {run} ({'reindex' if reindex_first else 'index'} first):")
        print(f"  clipfuse index:   {report.indexed} docs in {index_seconds:.2f}s = {index_rate:.1f} docs/s")
        print(
            f"  clipfuse reindex: {summary['copied']} docs re-embedded in {copy_seconds:.2f}s = {reindex_rate:.1f} "
            f"docs/s (whole run with prepare / load / verify / swap: {summary['seconds']:.2f}s = {total_rate:.1f} "
            "docs/s)"
        )
        print(f"  ratio reindex / index: {reindex_rate / index_rate:.2f} (whole run: {total_rate / index_rate:.2f})")
        print(
            f"  CPU seconds: index {index_cpu:.2f}s, reindex copy {reindex_cpu:.2f}s; ratio of docs per CPU second "
            f"{cpu_ratios[-1]:.2f}"
        )
        print("  reindex stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in summary["timings"].items()))
        print("  index pipeline: " + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(report.stage_seconds.items())))
        print(
            "  reindex pipeline: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(summary["report"].stage_seconds.items()))
        )
    ordered = sorted(ratios)
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    print("ratios: " + ", ".join(f"{r:.2f}" for r in ratios) + f"; median {median:.2f}")
    ordered = sorted(cpu_ratios)
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    print("ratios per CPU second: " + ", ".join(f"{r:.2f}" for r in cpu_ratios) + f"; median {median:.2f}")


if __name__ == "__main__":
    main()
