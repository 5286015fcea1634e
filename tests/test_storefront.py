"""A real InstantSearch storefront against `clipfuse serve`, in Chromium, from another origin (CORS for real).

The page (``tests/storefront/``) is built from the npm packages ``instantsearch.js`` and
``algoliasearch`` (the lite client, pointed at the service by its ``hosts`` option),
installed by ``scripts/install.sh`` (``npm ci``, pinned by ``package-lock.json``) and bundled
here with the installed esbuild; no CDN. The service runs as a user starts it, with a
search-only key and the storefront's origin as the one CORS origin; the page is served
by a second local HTTP server on another port. A screenshot goes to ``tests/artifacts/``.
"""

from __future__ import annotations

import functools
import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from browser import ARTIFACTS, index_catalog, read_catalog, serve, tab

from clipfuse.demo.catalog import write_catalog

STOREFRONT = Path(__file__).parent / "storefront"
ESBUILD = STOREFRONT / "node_modules" / ".bin" / "esbuild"
SEED, SIZE = 931, 80
KEY = "storefront-search-key"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("sf-catalog"), n=SIZE, seed=SEED, image_size=96)


@pytest.fixture(scope="module")
def products(catalog: Path) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in read_catalog(catalog)}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, catalog: Path, demo_embedder: Any) -> Path:
    return index_catalog(catalog, tmp_path_factory.mktemp("sf-store"), demo_embedder)


@pytest.fixture(scope="module")
def storefront(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The storefront bundle (esbuild from the installed npm packages), served on its own port."""
    if not ESBUILD.exists():
        pytest.fail(
            f"the storefront's npm packages are not installed ({ESBUILD} is missing): run scripts/install.sh "
            "(it runs `npm ci` in tests/storefront)"
        )
    out = tmp_path_factory.mktemp("sf-site")
    subprocess.run(
        [str(ESBUILD), "src/app.js", "--bundle", "--format=iife", "--target=es2019", f"--outfile={out / 'app.js'}"],
        cwd=STOREFRONT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (out / "index.html").write_bytes((STOREFRONT / "index.html").read_bytes())

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(out)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(store: Path, catalog: Path, storefront: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`clipfuse serve` with a search-only key and the storefront's origin allowed (and no other)."""
    env = {
        "CLIPFUSE_SERVICE__CORS_ORIGINS": json.dumps([storefront]),
        "CLIPFUSE_SERVICE__ALGOLIA_API_KEY": KEY,
        "CLIPFUSE_SERVICE__ALGOLIA_APP_ID": "CLIPFUSE",
    }
    with serve(store, catalog, tmp_path_factory.mktemp("sf-log") / "serve.log", env) as base:
        yield base


@pytest.fixture
def shop(browser: Any, server: str, storefront: str) -> Iterator[Any]:
    api = server.removeprefix("http://")
    url = f"{storefront}/index.html?api={api}&key={KEY}&app=CLIPFUSE"
    calls: list[str] = []

    def record_calls(page: Any) -> None:
        page.on("request", lambda r: calls.append(r.url) if "/1/indexes/" in r.url else None)

    with tab(browser, url, viewport=(1280, 900), allow_failed_loads=False, setup=record_calls) as page:
        page.wait_for_selector("#hits .product")
        page.calls = calls  # type: ignore[attr-defined]
        yield page
        assert calls and all(c.startswith(server) for c in calls)  # every search crossed origins to the service


def _ids(page: Any) -> list[str]:
    return page.eval_on_selector_all("#hits .product", "cards => cards.map(c => c.dataset.id)")


def _nb_hits(page: Any) -> int:
    text = page.inner_text("#stats")
    return int(text.split()[0].replace(",", ""))


def _settle(page: Any, before: list[str] | None = None) -> None:
    """Wait until InstantSearch has rendered the latest answer (and it differs from ``before``)."""
    page.wait_for_function("() => window.__search && window.__search.status === 'idle'")
    if before is not None:
        page.wait_for_function(
            "old => JSON.stringify([...document.querySelectorAll('#hits .product')].map(c => c.dataset.id)) !== old",
            arg=json.dumps(before),
        )
    page.wait_for_function("() => window.__search.status === 'idle'")


def _brand_counts(page: Any) -> dict[str, int]:
    items = page.eval_on_selector_all(
        "#brand .ais-RefinementList-item",
        "items => items.map(i => [i.querySelector('.ais-RefinementList-labelText').textContent,"
        " Number(i.querySelector('.ais-RefinementList-count').textContent)])",
    )
    return dict(items)


def _search(page: Any, text: str) -> None:
    before = _ids(page)
    page.fill("#searchbox input", text)
    _settle(page, before)


def test_query_brand_and_price_refinements_with_highlights(shop: Any, products: dict[str, dict[str, Any]]) -> None:
    page = shop
    assert _nb_hits(page) == SIZE  # the empty query lists every product
    first_ids = _ids(page)
    assert len(first_ids) == 8
    _search(page, "striped")
    ids = _ids(page)
    assert ids != first_ids
    striped = [i for i in ids if "striped" in products[i]["title"].lower()]
    assert striped, [products[i]["title"] for i in ids]
    marks = page.eval_on_selector_all("#hits .product .title mark", "ms => ms.map(m => m.textContent.toLowerCase())")
    assert marks and set(marks) == {"striped"}, marks  # Highlight marks the query word, and only it
    # every product is in the window of a small catalog: counts are the catalog's brand counts
    brands = Counter(p["attributes"]["brand"] for p in products.values())
    assert _brand_counts(page) == dict(brands)

    brand = sorted(brands, key=lambda b: (-brands[b], b))[1]
    before = _ids(page)
    page.click(f"#brand .ais-RefinementList-item:has-text('{brand}') input")
    _settle(page, before)
    assert _nb_hits(page) == brands[brand]
    shown = _ids(page)
    assert shown and all(products[i]["attributes"]["brand"] == brand for i in shown)
    # disjunctive faceting: the other brands keep their counts (InstantSearch asks for them without the refinement)
    assert _brand_counts(page) == dict(brands)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "storefront-instantsearch.png"))

    # a price range narrows the hits: between the 25th and 75th percentile of the brand's prices
    prices = sorted(p["attributes"]["price"] for p in products.values() if p["attributes"]["brand"] == brand)
    low, high = int(prices[len(prices) // 4]), int(prices[3 * len(prices) // 4]) + 1
    inside = [p for p in prices if low <= p <= high]
    assert 0 < len(inside) < len(prices)
    before = _ids(page)
    page.fill("#price .ais-RangeInput-input--min", str(low))
    page.fill("#price .ais-RangeInput-input--max", str(high))
    page.click("#price .ais-RangeInput-submit")
    page.wait_for_function(
        "n => Number(document.querySelector('#stats').innerText.split(' ')[0]) === n", arg=len(inside)
    )
    _settle(page)
    assert all(low <= products[i]["attributes"]["price"] <= high for i in _ids(page))
    assert all(products[i]["attributes"]["brand"] == brand for i in _ids(page))


def test_page_two_shares_no_hit_with_page_one(shop: Any) -> None:
    page = shop
    _search(page, "bag")
    one = _ids(page)
    assert len(one) == 8
    page.click(".ais-Pagination-item--page:not(.ais-Pagination-item--selected) >> text='2'")
    _settle(page, one)
    two = _ids(page)
    assert len(two) == 8 and not set(one) & set(two)
    assert page.inner_text(".ais-Pagination-item--selected") == "2"


def test_wrong_key_shows_the_services_error(browser: Any, server: str, storefront: str) -> None:
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(f"{storefront}/index.html?api={server.removeprefix('http://')}&key=wrong&app=CLIPFUSE")
    tab.wait_for_function("() => document.querySelector('#error').textContent.length > 0", timeout=60_000)
    assert "Invalid Application-ID or API key" in tab.inner_text("#error")
    context.close()
