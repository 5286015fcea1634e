"""Load test and bounded soak of ``clipfuse serve`` on loopback (issue 16).

Builds a demo catalog in an Edge store (the shipped demo model), starts ``clipfuse serve`` on
127.0.0.1 as a child process, and drives ``POST /search`` with ``--clients`` concurrent
keep-alive clients (one asyncio loop, httpx) for a bounded number of requests and seconds:

- ``repeating``: query texts drawn from a Zipf distribution over shopper-like texts (shop
  queries repeat heavily: the LRU cache answers most of them);
- ``distinct``: every request a text never sent before (every one misses the cache);

each phase reports throughput, p50 / p95 / p99 latency, errors and the load average; then a
``--soak`` of repeating queries samples the server's RSS every few seconds (growth beyond the
cache's bound would be a leak). Every request targets 127.0.0.1 and every loop is bounded.

    .venv/bin/python scripts/load_test.py --products 2000 --clients 8 --requests 4000 --seconds 30 \\
        --soak 180 --json /tmp/load.json

The client shares the machine with the server: on 2 cores its own CPU time (~0.5 ms per
request) is taken from the server, so the throughput is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build_store(folder: Path, products: int) -> Path:
    from clipfuse.demo.catalog import write_catalog
    from clipfuse.factory import build_indexer
    from clipfuse.settings import DEMO_MODEL, Settings
    from clipfuse.sources import read_catalog

    catalog = write_catalog(folder / "catalog", n=products, seed=4242, image_size=96)
    store = folder / "store"
    settings = Settings().with_store(store)
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"name": DEMO_MODEL})})
    indexer = build_indexer(settings, base_dir=catalog.parent)
    report = indexer.index(list(read_catalog(catalog)))
    indexer.close()
    backend = indexer.backend
    optimize = getattr(backend, "optimize", None)
    if callable(optimize):
        optimize()
    backend.close()
    if report.indexed != products:
        raise SystemExit(f"indexed {report.indexed} of {products}")
    return store


def shop_texts(n: int, seed: int) -> list[str]:
    from clipfuse.demo.catalog import CATEGORIES, COLORS, MATERIALS, PATTERNS

    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        shape = int(rng.integers(4))
        words = [str(rng.choice(list(CATEGORIES)))]
        if shape >= 1:
            words.insert(0, str(rng.choice(list(COLORS))))
        if shape >= 2:
            words.insert(1, str(rng.choice(list(PATTERNS))))
        if shape >= 3:
            words.insert(-1, str(rng.choice(list(MATERIALS))))
        text = " ".join(words)
        if len(out) >= 0.8 * n:  # a tail of longer, rarer queries
            text += f" under {int(rng.integers(20, 300))}"
        out[text] = None
    return list(out)


async def drive(
    url: str, texts: list[str], *, clients: int, requests: int, seconds: float, distinct: bool, seed: int
) -> dict[str, Any]:
    import httpx

    rng = np.random.default_rng(seed)
    if distinct:
        plan = [f"{texts[i % len(texts)]} {i}" for i in range(requests)]  # never repeats
    else:
        ranks = np.minimum(rng.zipf(1.2, size=requests), len(texts)) - 1
        plan = [texts[int(r)] for r in ranks]
    latencies: list[float] = []
    errors: list[str] = []
    cursor = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal cursor
        while time.monotonic() < deadline:
            if cursor >= len(plan):
                return
            text = plan[cursor]
            cursor += 1
            t0 = time.perf_counter()
            try:
                response = await http.post(f"{url}/search", json={"text": text, "k": 10})
                ok = response.status_code == 200 and bool(response.json()["hits"])
                if not ok:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(repr(e))
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    load_before = _load()
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    values = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    return {
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(wall, 2),
        "queries_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "distinct_texts": len(set(plan[: len(latencies) + len(errors)])),
        "load_average": {"before": load_before, "after": _load()},
    }


def start_server(store: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    import httpx

    cmd = [sys.executable, "-m", "clipfuse.cli", "serve", "--store", str(store), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=os.environ | env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become healthy in 120 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000, help="most requests per phase")
    parser.add_argument("--seconds", type=float, default=30, help="longest phase")
    parser.add_argument("--soak", type=float, default=180, help="soak seconds (0: none)")
    parser.add_argument("--encoders", default="onnx,torch", help="CLIPFUSE_MODEL__TEXT_ENCODER values, one server each")
    parser.add_argument("--cache-size", type=int, default=4096)
    parser.add_argument("--store", type=Path, help="an existing demo Edge store (default: build one)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clipfuse-load-") as tmp:
        t0 = time.perf_counter()
        store = args.store or build_store(Path(tmp), args.products)
        build_s = round(time.perf_counter() - t0, 1)
        texts = shop_texts(600, seed=7)
        result: dict[str, Any] = {
            "products": args.products,
            "clients": args.clients,
            "store_build_s": build_s,
            "cpu_count": os.cpu_count(),
            "phases": {},
        }
        for encoder in [e for e in args.encoders.split(",") if e]:
            port = _free_port()
            env = {
                "CLIPFUSE_MODEL__NAME": "clipfuse-demo",
                "CLIPFUSE_MODEL__DEVICE": "cpu",
                "CLIPFUSE_MODEL__TEXT_ENCODER": encoder,
                "CLIPFUSE_MODEL__QUERY_CACHE_SIZE": str(args.cache_size),
                "CLIPFUSE_SERVICE__UI": "false",
                "CLIPFUSE_LOG_LEVEL": "WARNING",
            }
            server = start_server(store, port, env)
            url = f"http://127.0.0.1:{port}"
            try:
                rss_start = _rss_mib(server.pid)
                asyncio.run(drive(url, texts, clients=2, requests=200, seconds=10, distinct=False, seed=1))  # warm-up
                for name, distinct in (("repeating", False), ("distinct", True)):
                    figures = asyncio.run(
                        drive(
                            url,
                            texts,
                            clients=args.clients,
                            requests=args.requests,
                            seconds=args.seconds,
                            distinct=distinct,
                            seed=2,
                        )
                    )
                    result["phases"][f"{encoder}/{name}"] = figures
                    print(f"{encoder}/{name}: {json.dumps(figures)}", flush=True)
                if args.soak > 0 and encoder == args.encoders.split(",")[0]:
                    result["soak"] = soak(url, server.pid, texts, args, rss_start)
                    print(f"soak: {json.dumps(result['soak'])}", flush=True)
            finally:
                stop_server(server)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


def soak(url: str, pid: int, texts: list[str], args: argparse.Namespace, rss_start: float) -> dict[str, Any]:
    """Repeating queries (and one distinct in ten) for ``args.soak`` seconds in 10 s slices, sampling RSS."""
    samples: list[tuple[float, float]] = []
    totals = {"ok": 0, "errors": 0}
    p95s: list[float] = []
    started = time.monotonic()
    slice_no = 0
    while time.monotonic() - started < args.soak:
        slice_no += 1
        figures = asyncio.run(
            drive(
                url,
                texts,
                clients=args.clients,
                requests=100_000,
                seconds=min(10.0, args.soak),
                distinct=slice_no % 10 == 0,
                seed=100 + slice_no,
            )
        )
        totals["ok"] += figures["ok"]
        totals["errors"] += figures["errors"]
        p95s.append(figures["p95_ms"])
        samples.append((round(time.monotonic() - started, 1), round(_rss_mib(pid), 1)))
    rss = [r for _, r in samples]
    half = len(rss) // 2
    return {
        "seconds": round(time.monotonic() - started, 1),
        **totals,
        "queries_per_s": round(totals["ok"] / (time.monotonic() - started), 1),
        "p95_ms_per_10s_slice": {"min": min(p95s), "max": max(p95s), "median": float(np.median(p95s))},
        "rss_mib": {
            "at_start_before_warm_up": round(rss_start, 1),
            "first_sample": rss[0],
            "max": max(rss),
            "last": rss[-1],
            "growth_second_half": round(max(rss[half:]) - max(rss[: max(1, half)]), 1),
        },
        "rss_samples": samples,
        "cache_bound_mib": round(args.cache_size * 128 * 4 / 2**20, 2),
        "load_average": _load(),
    }


if __name__ == "__main__":
    main()
