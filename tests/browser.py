"""The harness of the browser tests: a demo catalog indexed into Qdrant Edge, `clipfuse serve` in a subprocess,
and Debian's Chromium driven by Playwright (``tests/test_web_ui.py``, ``tests/test_storefront.py``).

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``, or ``CLIPFUSE_CHROMIUM``)
and the ``playwright`` Python package (its driver is bundled; Playwright's own browser download does
not work on these machines and is never used). The ``browser`` fixture (``tests/conftest.py``) launches
one Chromium per test session. Screenshots go to ``tests/artifacts/`` (or ``$CLIPFUSE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path(os.environ.get("CLIPFUSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("CLIPFUSE_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_catalog(catalog: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]


def index_catalog(catalog: Path, store: Path, embedder: Any, *, optimize: bool = False) -> Path:
    """The catalog in the default embedded engine (Qdrant Edge) at ``store``, as `clipfuse index` builds it."""
    from clipfuse.images import ImageLoader
    from clipfuse.ingest.pipeline import Indexer
    from clipfuse.plugin.edge import EdgeBackend

    docs = read_catalog(catalog)
    backend = EdgeBackend(store, "products")
    try:
        report = Indexer(embedder, backend, loader=ImageLoader(base_dir=catalog.parent)).index(docs)
        assert report.indexed == len(docs), report.rejected
        if optimize:
            backend.optimize()
    finally:
        backend.close()  # the service process opens the store next
    return store


@contextlib.contextmanager
def serve(store: Path, catalog: Path, log_path: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """`clipfuse serve` on a free localhost port, as a user starts it; yields its base URL."""
    port = free_port()
    environment = {**os.environ, "CLIPFUSE_SERVICE__CHECK_BROKER": "false", "CLIPFUSE_LOG_LEVEL": "INFO", **(env or {})}
    environment.pop("CLIPFUSE_MODEL__NAME", None)  # the service must pick the model recorded in the index
    command = [
        sys.executable, "-m", "clipfuse.cli", "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--store", str(store), "--index", "products", "--catalog-root", str(catalog.parent),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"clipfuse serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"clipfuse serve did not become healthy in 180 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright; fails with what to install when either is missing."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: install Debian's package with "
            "`apt-get update && apt-get install -y chromium` (or set CLIPFUSE_CHROMIUM to a Chromium binary); "
            "Playwright's own browser downloads do not work on these machines"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the playwright package: pip install playwright (no browser download)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@contextlib.contextmanager
def tab(
    browser: Any,
    url: str,
    *,
    viewport: tuple[int, int] = (1440, 1000),
    allow_failed_loads: bool = True,
    setup: Callable[[Any], None] | None = None,
) -> Iterator[Any]:
    """A fresh browser context with one tab at ``url``; the test fails if the page threw or logged an error.

    Chromium logs an HTTP error answer as "Failed to load resource": with ``allow_failed_loads`` those
    are not problems (the tests check the answers themselves). ``setup(page)`` runs before the page loads.
    """
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: Any) -> None:
        failed_load = message.text.startswith("Failed to load resource")
        if message.type == "error" and not (allow_failed_loads and failed_load):
            problems.append(f"console {message.type}: {message.text}")

    page.on("console", on_console)
    if setup is not None:
        setup(page)
    page.goto(url)
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    print(f"screenshot: {path}")
    return path
