"""The web search page in a real browser: `clipfuse serve` in a subprocess, headless Chromium via Playwright.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``) and the
``playwright`` Python package (its driver is bundled; no browser download is used).
Screenshots go to ``tests/artifacts/`` (or ``$CLIPFUSE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipfuse.demo.catalog import write_catalog
from clipfuse.images import ImageLoader
from clipfuse.ingest.pipeline import Indexer

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
#: a catalog seed the demo model never saw (it trains on 100..139) whose first 150 products
#: hold three red striped t-shirts, so "red striped t-shirt" has right answers to find
SEED, SIZE = 930, 150

pytestmark = pytest.mark.slow


# -- the catalog, its index and the service ---------------------------------------------
@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 synthetic products with 128 px JPEG photos."""
    return write_catalog(tmp_path_factory.mktemp("ui-catalog"), n=SIZE, seed=SEED, image_size=128)


@pytest.fixture(scope="module")
def products(catalog: Path) -> dict[str, dict[str, Any]]:
    docs = [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]
    return {d["id"]: d for d in docs}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, catalog: Path, demo_embedder: Any) -> Path:
    """The default embedded engine (Qdrant Edge), as `clipfuse index` builds it."""
    from clipfuse.plugin.edge import EdgeBackend

    path = tmp_path_factory.mktemp("ui-store")
    docs = [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]
    backend = EdgeBackend(path, "products")
    try:
        indexer = Indexer(demo_embedder, backend, loader=ImageLoader(base_dir=catalog.parent))
        assert indexer.index(docs).indexed == len(docs)
        backend.optimize()
    finally:
        backend.close()  # the service process opens the store next
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(store: Path, catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`clipfuse serve` on a free localhost port, as a user would start it."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("ui-log") / "serve.log"
    env = {**os.environ, "CLIPFUSE_SERVICE__CHECK_BROKER": "false", "CLIPFUSE_LOG_LEVEL": "INFO"}
    env.pop("CLIPFUSE_MODEL__NAME", None)  # the service must pick the model recorded in the index
    command = [
        sys.executable, "-m", "clipfuse.cli", "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--store", str(store), "--index", "products", "--catalog-root", str(catalog.parent),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: install Debian's package with "
            "`apt-get update && apt-get install -y chromium` (or set CLIPFUSE_CHROMIUM to a Chromium binary); "
            "Playwright's own browser downloads do not work on these machines"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the playwright package: pip install playwright (no browser download)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: Any) -> None:
        # HTTP error answers are logged by Chromium as "Failed to load resource"; the tests check those themselves
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(f"console {message.type}: {message.text}")

    tab.on("console", on_console)
    tab.goto(server + "/")
    tab.wait_for_selector("#filters select[data-field='category']")  # filter controls built from /api/facets
    yield tab
    context.close()
    assert not problems, problems


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    print(f"screenshot: {path}")
    return path


def _result_ids(page: Any, n: int = 8) -> list[str]:
    return page.eval_on_selector_all("#grid .card", f"cards => cards.slice(0, {n}).map(c => c.dataset.id)")


def _wait_for_results(page: Any, label: str) -> None:
    page.wait_for_function(
        "label => document.querySelector('#status')?.textContent.includes(label) && "
        "!document.querySelector('#grid').classList.contains('loading')",
        arg=label,
    )
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid .card img')].slice(0, 4)"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )


# -- tests ------------------------------------------------------------------------------
def _look(product: dict[str, Any]) -> tuple[str, str, str]:
    a = product["attributes"]
    return a["category"], a["color"], a["pattern"]


def _unique_looking(
    products: dict[str, dict[str, Any]], where: Callable[[dict[str, Any]], bool] = lambda attributes: True
) -> str:
    """A product that no other product looks like (same category, colour and pattern look the same)."""
    looks = Counter(_look(p) for p in products.values())
    for pid, p in products.items():
        if looks[_look(p)] == 1 and where(p["attributes"]):
            return pid
    raise AssertionError("no unique-looking product matches")


def test_text_query_shows_matching_products(page: Any, products: dict[str, dict[str, Any]]) -> None:
    expected = {pid for pid, p in products.items() if _look(p) == ("t-shirt", "red", "striped")}
    assert len(expected) == 3
    page.fill("#q", "red striped t-shirt")
    page.press("#q", "Enter")
    _wait_for_results(page, "red striped t-shirt")
    ids = _result_ids(page)
    titles = [(i, products[i]["title"]) for i in ids]
    assert ids[0] in expected, titles
    assert len(expected & set(ids[:3])) >= 2, titles
    assert expected <= set(ids[:5]), titles
    # the card shows the title, the price and every signal's score
    first = page.locator("#grid .card").first
    assert first.locator(".title").inner_text() == products[ids[0]]["title"]
    assert first.locator(".price").inner_text() == f"{products[ids[0]]['attributes']['price']:.2f}"
    labels = first.locator(".scores .label").all_inner_texts()
    assert labels == ["image", "text", "bm25", "fused"]
    assert "–" not in first.locator(".scores .value").all_inner_texts()
    _shot(page, "web-ui-text-search.png")


def test_uploaded_catalog_image_finds_that_product_first(
    page: Any, products: dict[str, dict[str, Any]], catalog: Path
) -> None:
    pid = _unique_looking(products)
    image = catalog.parent / products[pid]["images"][0]["path"]
    page.set_input_files("#file-input", str(image))
    _wait_for_results(page, "for the image")
    ids = _result_ids(page)
    assert ids[0] == pid, [(i, products[i]["title"]) for i in ids]
    shown = page.locator("#image-preview")
    assert shown.is_visible() and page.locator("#q").is_disabled()
    # visually similar products follow: most of the next four share two of category, colour, pattern with it
    query = _look(products[pid])
    similar = [sum(a == b for a, b in zip(_look(products[i]), query, strict=True)) >= 2 for i in ids[1:5]]
    assert sum(similar) >= 3, [products[i]["title"] for i in ids[:5]]
    _shot(page, "web-ui-image-search.png")


def test_dropped_image_with_modifier_and_filter(page: Any, products: dict[str, dict[str, Any]], server: str) -> None:
    pid = _unique_looking(products, lambda a: a["category"] == "sneakers")
    colours = Counter(
        p["attributes"]["color"]
        for p in products.values()
        if p["attributes"]["category"] == "sneakers"
        and p["attributes"]["color"] != products[pid]["attributes"]["color"]
    )
    colour = colours.most_common(1)[0][0]  # "these, but in <colour>": sneakers of that colour exist
    url = f"{server}/images/{products[pid]['images'][0]['path']}"
    page.evaluate(
        """async (url) => {
            const blob = await (await fetch(url)).blob();
            const data = new DataTransfer();
            data.items.add(new File([blob], 'dropped.jpg', { type: 'image/jpeg' }));
            document.body.dispatchEvent(new DragEvent('dragenter', { dataTransfer: data, bubbles: true }));
            document.body.dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
        }""",
        url,
    )
    _wait_for_results(page, "for the image")
    assert _result_ids(page)[0] == pid
    assert page.locator("#drop-overlay").is_hidden()
    # "but in <colour>": a modifier text, and a filter on the category from the facets
    page.fill("#modifier", f"{colour} sneakers")
    page.select_option("#filters select[data-field='category']", "sneakers")
    page.press("#modifier", "Enter")
    _wait_for_results(page, f"the image + “{colour} sneakers”")
    ids = _result_ids(page)
    assert ids and all(products[i]["attributes"]["category"] == "sneakers" for i in ids)
    assert colour in [products[i]["attributes"]["color"] for i in ids[:2]], [products[i]["title"] for i in ids[:5]]
    assert page.locator("#grid .card").first.locator(".scores .value").nth(2).inner_text() != "–"  # bm25 ran


def test_weight_sliders_and_fusion_reach_the_query(page: Any) -> None:
    page.fill("#q", "blue dotted scarf")
    page.press("#q", "Enter")
    _wait_for_results(page, "blue dotted scarf")
    page.eval_on_selector("#w-bm25", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    page.select_option("#fusion", "linear")  # triggers the search again with both changes
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('LINEAR')")
    _wait_for_results(page, "blue dotted scarf")
    assert page.locator("#w-bm25-out").inner_text() == "0.0"
    bm25 = page.locator("#grid .card .scores .value").evaluate_all(
        "vs => vs.filter((v, i) => i % 4 === 2).map(v => v.textContent)"
    )
    assert bm25 and set(bm25) == {"–"}, bm25  # the keyword signal is off
    assert "client-side" in page.locator("#status").inner_text()


def test_not_an_image_shows_an_error(page: Any, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    page.set_input_files("#file-input", str(text_file))
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.locator("#error").inner_text()
    bad = tmp_path / "fake.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('corrupt')")
