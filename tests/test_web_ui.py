"""The web search page in a real browser: `clipfuse serve` in a subprocess, headless Chromium via Playwright.

The harness (Debian's Chromium, the service, the Edge index) is ``tests/browser.py``. The page is
a shop page: facet checklists and ranges with counts, one card per product with its colour
variants as swatches, pages through ``next_cursor``, and the search kept in the URL.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from browser import index_catalog, read_catalog, serve, shot, tab

from clipfuse.demo.catalog import write_catalog

#: a catalog seed the demo model never saw (it trains on 100..139) whose first 150 products
#: hold three red striped t-shirts, so "red striped t-shirt" has right answers to find
SEED, SIZE = 930, 150

pytestmark = pytest.mark.slow


# -- the catalog, its index and the service ---------------------------------------------
@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 synthetic products with 128 px JPEG photos (135 products: 14 come in 2 or 3 colours)."""
    return write_catalog(tmp_path_factory.mktemp("ui-catalog"), n=SIZE, seed=SEED, image_size=128)


@pytest.fixture(scope="module")
def products(catalog: Path) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in read_catalog(catalog)}


@pytest.fixture(scope="module")
def groups(products: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """group_id -> its products' ids (the colour variants of one product)."""
    out: dict[str, list[str]] = defaultdict(list)
    for pid, p in products.items():
        out[p["attributes"]["group_id"]].append(pid)
    return dict(out)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, catalog: Path, demo_embedder: Any) -> Path:
    """The default embedded engine (Qdrant Edge), as `clipfuse index` builds it."""
    return index_catalog(catalog, tmp_path_factory.mktemp("ui-store"), demo_embedder, optimize=True)


#: the merchandising rule of the service: "summer sale" pins this product first
RULE_ID, RULE_QUERY = "summer-sale", "summer sale"


@pytest.fixture(scope="module")
def pinned(products: dict[str, dict[str, Any]]) -> str:
    return sorted(products)[7]


@pytest.fixture(scope="module")
def server(store: Path, catalog: Path, pinned: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`clipfuse serve` on a free localhost port, as a user would start it, with a rules file."""
    folder = tmp_path_factory.mktemp("ui-log")
    rules = folder / "rules.json"
    rule = {"id": RULE_ID, "conditions": [{"pattern": RULE_QUERY, "anchoring": "contains"}]}
    rules.write_text(json.dumps({"rules": [{**rule, "consequence": {"pin": [{"id": pinned, "position": 1}]}}]}))
    with serve(store, catalog, folder / "serve.log", {"CLIPFUSE_SEARCH__RULES_FILE": str(rules)}) as base:
        yield base


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    with tab(browser, server + "/") as opened:
        opened.wait_for_selector("#facets input[data-field='category']")  # checklists built from /api/ui
        yield opened


def _result_ids(page: Any, n: int = 8) -> list[str]:
    return page.eval_on_selector_all("#grid .card", f"cards => cards.slice(0, {n}).map(c => c.dataset.id)")


def _cards(page: Any) -> list[dict[str, Any]]:
    """Every card: its product id, group, and the ids of its swatches."""
    return page.eval_on_selector_all(
        "#grid .card",
        "cards => cards.map(c => ({id: c.dataset.id, group: c.dataset.group || null,"
        " swatches: [...c.querySelectorAll('.swatch')].map(s => s.dataset.id)}))",
    )


def _answer(page: Any) -> str:
    return page.eval_on_selector("#grid", "grid => grid.dataset.answer || ''")


def _settled(page: Any, before: str | None = None) -> None:
    """Wait until the page shows a search answered after ``before`` (and its first photos have loaded)."""
    page.wait_for_function(
        "before => { const grid = document.querySelector('#grid');"
        " return (grid.dataset.answer || '') !== before && !grid.classList.contains('loading'); }",
        arg=before if before is not None else "",
    )
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid .card .thumb img')].slice(0, 4)"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )


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


def _search(page: Any, text: str) -> None:
    before = _answer(page)
    page.fill("#q", text)
    page.press("#q", "Enter")
    _settled(page, before)


def _counts(page: Any, field: str) -> dict[str, int]:
    rows = page.eval_on_selector_all(
        f"#facets fieldset[data-facet='{field}'] li label",
        "labels => labels.map(l => [l.querySelector('input').value, Number(l.querySelector('.count').textContent)])",
    )
    return dict(rows)


def _tick(page: Any, field: str, value: str, *, on: bool = True) -> None:
    before = _answer(page)
    box = f"#facets input[data-field='{field}'][value='{value}']"
    page.check(box) if on else page.uncheck(box)
    _settled(page, before)


def _params(page: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def _group_counts(
    products: dict[str, dict[str, Any]], field: str, where: Callable[[dict[str, Any]], bool] = lambda a: True
) -> dict[str, int]:
    """Brute force: per value of ``field``, the products (groups) with a variant of that value passing ``where``."""
    seen: dict[str, set[str]] = defaultdict(set)
    for p in products.values():
        a = p["attributes"]
        if where(a):
            value = a[field]
            seen[("true" if value else "false") if isinstance(value, bool) else str(value)].add(a["group_id"])
    return {value: len(members) for value, members in seen.items()}


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
    shot(page, "web-ui-text-search.png")


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
    shot(page, "web-ui-image-search.png")


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
    _tick(page, "category", "sneakers")  # searches again, with the modifier
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


# -- the shop page: facets, one card per product, pages, the URL ---------------------------
def test_ticking_a_facet_filters_hits_changes_counts_and_lands_in_the_url(
    page: Any, products: dict[str, dict[str, Any]], groups: dict[str, list[str]]
) -> None:
    _search(page, "striped")
    # 240 candidates per signal: the whole 150-product catalog is the window, so counts are the catalog's, by product
    assert f"{len(groups)} products" in page.inner_text("#status")
    assert _counts(page, "brand") == _group_counts(products, "brand")
    assert _counts(page, "category") == _group_counts(products, "category")
    assert _counts(page, "in_stock") == _group_counts(products, "in_stock")
    before_colors = _counts(page, "color")

    brands = _group_counts(products, "brand")
    brand = sorted(brands, key=lambda b: (-brands[b], b))[1]
    _tick(page, "brand", brand)
    assert page.is_checked(f"#facets input[data-field='brand'][value='{brand}']")
    cards = _cards(page)
    assert cards and all(products[c["id"]]["attributes"]["brand"] == brand for c in cards)
    assert f"{brands[brand]} products" in page.inner_text("#status")
    # the other facets count the filtered results; the ticked one still offers its other values
    colors = _counts(page, "color")
    assert colors == _group_counts(products, "color", lambda a: a["brand"] == brand)
    assert colors != before_colors
    assert _counts(page, "brand") == brands
    assert _params(page) == {"q": ["striped"], "brand": [brand]}
    shot(page, "web-ui-facets.png")

    # a second brand widens (either brand), a price range narrows
    other = sorted(brands, key=lambda b: (-brands[b], b))[2]
    _tick(page, "brand", other)
    assert _params(page)["brand"] == sorted([brand, other])
    assert {products[c["id"]]["attributes"]["brand"] for c in _cards(page)} == {brand, other}
    prices = sorted(p["attributes"]["price"] for p in products.values() if p["attributes"]["brand"] in (brand, other))
    high = int(prices[len(prices) // 2])
    placeholder = page.get_attribute("#facets input[data-field='price'][data-bound='max']", "placeholder")
    assert placeholder is not None and int(placeholder) >= prices[-1]  # from facets_stats
    before = _answer(page)
    page.fill("#facets input[data-field='price'][data-bound='max']", str(high))
    page.press("#facets input[data-field='price'][data-bound='max']", "Enter")
    _settled(page, before)
    shown = [products[c["id"]]["attributes"] for c in _cards(page)]
    assert shown and all(a["price"] <= high and a["brand"] in (brand, other) for a in shown)
    assert _params(page)["price_max"] == [str(high)]
    _tick(page, "brand", brand, on=False)
    assert _params(page)["brand"] == [other]
    assert all(products[c["id"]]["attributes"]["brand"] == other for c in _cards(page))


def test_page_two_shares_no_product_with_page_one(page: Any) -> None:
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data or "{}")) if r.url.endswith("/search") else None)
    page.select_option("#k", "12")
    _search(page, "bag")
    one = _cards(page)
    assert len(one) == 12
    assert page.inner_text("#pager .current") == "1"
    before = _answer(page)
    page.click("#pager .next")
    _settled(page, before)
    two = _cards(page)
    assert len(two) == 12
    assert not {c["id"] for c in one} & {c["id"] for c in two}
    assert not {c["group"] for c in one} & {c["group"] for c in two}  # no product twice, in any colour
    assert not {s for c in one for s in c["swatches"]} & {s for c in two for s in c["swatches"]}
    assert bodies[-1].keys() == {"cursor", "k"}  # the next page of the same frozen ranking
    assert _params(page) == {"q": ["bag"], "k": ["12"], "page": ["2"]}
    assert page.inner_text("#pager .current") == "2"
    assert "13–24 shown" in page.inner_text("#status")


def test_a_product_with_variants_shows_once_with_swatches(
    page: Any, products: dict[str, dict[str, Any]], groups: dict[str, list[str]], server: str
) -> None:
    group, members = max(groups.items(), key=lambda item: (len(item[1]), item[0]))
    assert len(members) >= 3
    _search(page, products[members[0]]["title"])
    cards = _cards(page)
    mine = [c for c in cards if c["group"] == group]
    assert len(mine) == 1, cards
    assert not {c["id"] for c in cards if c["group"] != group} & set(members)
    card = mine[0]
    assert sorted(card["swatches"]) == sorted(members) and card["swatches"][0] == card["id"]

    other = next(m for m in members if m != card["id"])
    locator = page.locator(f"#grid .card[data-group='{group}']")
    locator.locator(f".swatch[data-id='{other}']").click()
    assert locator.locator(".title").inner_text() == products[other]["title"]
    assert locator.get_attribute("data-shown") == other
    src = locator.locator(".thumb img").get_attribute("src") or ""
    assert src.endswith(products[other]["images"][0]["path"]), src
    assert locator.locator(f".swatch[data-id='{other}']").get_attribute("aria-pressed") == "true"
    assert locator.locator(f".swatch[data-id='{card['id']}']").get_attribute("aria-pressed") == "false"
    assert products[other]["attributes"]["color"] in locator.locator(".chips").all_inner_texts()[0]
    shot(page, "web-ui-variants.png")


def test_a_shared_url_and_a_reload_restore_the_search(
    page: Any, browser: Any, server: str, products: dict[str, dict[str, Any]]
) -> None:
    brands = _group_counts(products, "brand")
    brand = max(brands, key=lambda b: (brands[b], b))
    page.select_option("#k", "12")
    _search(page, "striped")
    _tick(page, "brand", brand)
    before = _answer(page)
    page.click("#pager .next")
    _settled(page, before)
    ids = _result_ids(page, 12)
    assert ids and all(products[i]["attributes"]["brand"] == brand for i in ids)
    url = page.url
    assert _params(page) == {"q": ["striped"], "brand": [brand], "k": ["12"], "page": ["2"]}

    page.reload()
    _settled(page)
    assert page.url == url and _result_ids(page, 12) == ids
    assert page.input_value("#q") == "striped" and page.input_value("#k") == "12"
    assert page.is_checked(f"#facets input[data-field='brand'][value='{brand}']")
    assert page.inner_text("#pager .current") == "2"

    with tab(browser, url) as shared:  # a link opened elsewhere: no history, page 2 by offset
        _settled(shared)
        assert _result_ids(shared, 12) == ids
        assert shared.is_checked(f"#facets input[data-field='brand'][value='{brand}']")
        assert "13–" in shared.inner_text("#status")


def test_back_button_returns_to_the_previous_results(page: Any, products: dict[str, dict[str, Any]]) -> None:
    _search(page, "striped")
    first = _result_ids(page, 24)
    brands = _group_counts(products, "brand")
    brand = min(brands, key=lambda b: (brands[b], b))
    _tick(page, "brand", brand)
    filtered = _result_ids(page, 24)
    assert filtered != first
    _search(page, "dotted scarf")
    scarves = _result_ids(page, 24)

    before = _answer(page)
    page.go_back()
    _settled(page, before)
    assert page.input_value("#q") == "striped" and _result_ids(page, 24) == filtered
    assert page.is_checked(f"#facets input[data-field='brand'][value='{brand}']")
    before = _answer(page)
    page.go_back()
    _settled(page, before)
    assert _result_ids(page, 24) == first and _params(page) == {"q": ["striped"]}
    assert not page.is_checked(f"#facets input[data-field='brand'][value='{brand}']")
    before = _answer(page)
    page.go_forward()
    _settled(page, before)
    assert _result_ids(page, 24) == filtered
    before = _answer(page)
    page.go_forward()
    _settled(page, before)
    assert page.input_value("#q") == "dotted scarf" and _result_ids(page, 24) == scarves


def test_a_page_whose_cursor_is_gone_is_asked_by_offset(page: Any) -> None:
    page.select_option("#k", "12")
    _search(page, "bag")
    before = _answer(page)
    page.click("#pager .next")
    _settled(page, before)
    ids = _result_ids(page, 12)
    # what a reload after the cursor expired (or after a restart) sees: a token the service refuses
    page.evaluate("() => history.replaceState({cursor: 'c1.forged.12.AAAA', image: null}, '', location.href)")
    page.reload()
    _settled(page)
    assert _result_ids(page, 12) == ids and page.locator("#error").is_hidden()


def test_a_pinned_product_is_first_and_says_so(page: Any, pinned: str, products: dict[str, dict[str, Any]]) -> None:
    _search(page, f"{RULE_QUERY} scarf")
    first = page.locator("#grid .card").first
    assert first.get_attribute("data-id") == pinned
    badge = first.locator(".rule")
    assert badge.inner_text().lower() == "featured" and RULE_ID in (badge.get_attribute("title") or "")
    assert page.locator("#grid .card .rule").count() == 1
    assert first.locator(".title").inner_text() == products[pinned]["title"]


def test_query_text_is_shown_as_text_never_as_markup(page: Any) -> None:
    text = '<img src=x onerror="window.__owned=1"><b>bag</b>'
    _search(page, text)
    status = page.locator("#status")
    assert text in status.inner_text()
    assert status.locator("img").count() == 0 and status.locator("b").count() == 1  # the page's own <b>: the count
    assert page.evaluate("() => window.__owned") is None
    assert _params(page)["q"] == [text]


def test_the_page_script_never_parses_data_as_html() -> None:
    from clipfuse.service.app import STATIC_DIR

    script = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
