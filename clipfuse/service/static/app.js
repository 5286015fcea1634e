/* clipfuse web search page: plain JS, no build step. Talks to the same service's API.
 *
 * A shop page over POST /search: facet checklists and number ranges with counts from the
 * response (GET /api/ui says which fields), one card per product (collapse on the group
 * field, other colours as swatches), pages through the response's next_cursor, and the
 * whole search in the URL (?q=...&brand=A&brand=B&price_min=10&page=2) kept with
 * history.pushState / popstate. Data is only ever put in the page with textContent and
 * attributes, never parsed as HTML.
 */
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search-form"), q: $("q"), file: $("file-input"), drop: $("drop-zone"), overlay: $("drop-overlay"),
    imageQuery: $("image-query"), preview: $("image-preview"), imageName: $("image-name"), modifier: $("modifier"),
    clearImage: $("clear-image"), grid: $("grid"), status: $("status"), error: $("error"), empty: $("empty"),
    facets: $("facets"), resetFilters: $("reset-filters"), fusion: $("fusion"), k: $("k"),
    info: $("index-info"), suggestions: $("suggestions"), pager: $("pager"),
  };
  const sliders = ["image", "text", "bm25"].map((name) => ({ name, input: $(`w-${name}`), out: $(`w-${name}-out`) }));

  /** Candidates each signal retrieves: fixed, so page N by offset ranks the same window as page 1. */
  const CANDIDATES = 240;
  const DEFAULT_K = "24";
  const DEFAULT_FUSION = "rrf";
  /** URL parameters that are not facet fields. */
  const RESERVED = new Set(["q", "page", "k", "fusion", "w_image", "w_text", "w_bm25"]);

  const state = {
    config: { facets: [], collapse: null, variant_fields: [], max_values_per_facet: 10 },
    catalog: null, // GET /api/facets: the catalog's values, shown before the first search
    image: null, imageUrl: null, imageData: null, imageSerial: 0,
    selected: new Map(), // checklist field -> Set of values (strings)
    ranges: new Map(), // number field -> { min: "", max: "" }
    page: 1,
    cursors: new Map(), // search key -> Map(page -> cursor that answers that page)
    facetCache: new Map(), // search key -> { facets, stats } of its first page
    shown: null, // the facets last shown: { facets, stats }
    seq: 0,
  };

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  const fmt = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const label = (name) => name.replace(/_/g, " ");
  function formatPrice(value) {
    if (typeof value !== "number") return "";
    return value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = !message;
  }
  async function readError(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      return JSON.stringify(body.detail || body);
    } catch (_) {
      return `HTTP ${response.status}`;
    }
  }
  function weights() {
    const w = {};
    for (const s of sliders) w[s.name] = Number(s.input.value);
    return w;
  }
  const facetOf = (name) => state.config.facets.find((f) => f.name === name);

  // ---------------------------------------------------------------- the search as URL parameters
  /** The current search (without its page) as URL parameters, in a stable order. */
  function searchParams() {
    const params = new URLSearchParams();
    const text = els.q.value.trim();
    if (!state.image && text) params.set("q", text);
    for (const facet of state.config.facets) {
      if (facet.type === "number") {
        const range = state.ranges.get(facet.name) || {};
        if (range.min) params.set(`${facet.name}_min`, range.min);
        if (range.max) params.set(`${facet.name}_max`, range.max);
      } else {
        for (const value of [...(state.selected.get(facet.name) || [])].sort()) params.append(facet.name, value);
      }
    }
    if (els.k.value !== DEFAULT_K) params.set("k", els.k.value);
    if (els.fusion.value !== DEFAULT_FUSION) params.set("fusion", els.fusion.value);
    for (const s of sliders) if (Number(s.input.value) !== 1) params.set(`w_${s.name}`, s.input.value);
    return params;
  }
  /** Which cursors and facet counts belong together: the search, and the image it ran with. */
  const searchKey = () => `${state.image ? `image${state.imageSerial}&` : ""}${searchParams()}`;

  function pageUrl(page) {
    const params = searchParams();
    if (page > 1) params.set("page", String(page));
    const query = params.toString();
    return `${location.pathname}${query ? `?${query}` : ""}`;
  }

  /** Set every control from URL parameters (a shared link, a reload, the back button). */
  function restore(params) {
    els.q.value = params.get("q") || "";
    state.selected = new Map();
    state.ranges = new Map();
    for (const facet of state.config.facets) {
      if (facet.type === "number") {
        const range = { min: params.get(`${facet.name}_min`) || "", max: params.get(`${facet.name}_max`) || "" };
        if (range.min || range.max) state.ranges.set(facet.name, range);
      } else if (!RESERVED.has(facet.name)) {
        const values = params.getAll(facet.name);
        if (values.length) state.selected.set(facet.name, new Set(values));
      }
    }
    const k = params.get("k") || DEFAULT_K;
    els.k.value = [...els.k.options].some((o) => o.value === k) ? k : DEFAULT_K;
    const fusion = params.get("fusion") || DEFAULT_FUSION;
    els.fusion.value = [...els.fusion.options].some((o) => o.value === fusion) ? fusion : DEFAULT_FUSION;
    for (const s of sliders) {
      const value = Number(params.get(`w_${s.name}`) ?? "1");
      s.input.value = Number.isFinite(value) ? String(value) : "1";
      s.out.textContent = Number(s.input.value).toFixed(1);
    }
    const page = Number.parseInt(params.get("page") || "1", 10);
    state.page = Number.isFinite(page) && page > 0 ? page : 1;
  }

  // ---------------------------------------------------------------- filters
  function conditionsFor(facet) {
    if (facet.type === "number") {
      const range = state.ranges.get(facet.name) || {};
      const out = [];
      for (const [bound, op] of [["min", "gte"], ["max", "lte"]]) {
        const value = Number(range[bound]);
        if (range[bound] !== "" && range[bound] !== undefined && Number.isFinite(value)) {
          out.push({ field: facet.name, op, value });
        }
      }
      return out;
    }
    const picked = [...(state.selected.get(facet.name) || [])].sort();
    if (!picked.length) return [];
    const values = facet.type === "bool" ? picked.map((v) => v === "true") : picked;
    return [values.length === 1 ? { field: facet.name, op: "eq", value: values[0] } : { field: facet.name, op: "in", value: values }];
  }
  /** Every active filter; ``except``: leave that field's own out (its counts as if it were not ticked). */
  function filters(except = null) {
    return state.config.facets.filter((f) => f.name !== except).flatMap(conditionsFor);
  }

  // ---------------------------------------------------------------- the facet panel
  function catalogCounts() {
    const facets = {};
    const stats = {};
    for (const field of (state.catalog && state.catalog.fields) || []) {
      if (field.type === "number") {
        if (field.min !== null && field.max !== null) stats[field.name] = { min: field.min, max: field.max };
      } else {
        facets[field.name] = Object.fromEntries(field.values.map((v) => [String(v.value), v.count]));
      }
    }
    return { facets, stats };
  }

  function renderFacets(shown) {
    state.shown = shown;
    els.facets.replaceChildren();
    if (!state.config.facets.length) {
      els.facets.append(el("p", { class: "muted", text: "This index has no attributes to filter on." }));
      return;
    }
    for (const facet of state.config.facets) {
      const box = el("fieldset", { class: "facet", "data-facet": facet.name }, el("legend", { text: label(facet.name) }));
      if (facet.type === "number") {
        const range = state.ranges.get(facet.name) || { min: "", max: "" };
        const stats = shown.stats[facet.name];
        const row = el("div", { class: "range" });
        for (const bound of ["min", "max"]) {
          const edge = stats ? (bound === "min" ? Math.floor(stats.min) : Math.ceil(stats.max)) : null;
          const input = el("input", {
            type: "number", step: "any", inputmode: "decimal", value: range[bound] || null,
            placeholder: edge === null ? bound : String(edge), "data-field": facet.name, "data-bound": bound,
            "aria-label": `${label(facet.name)} ${bound === "min" ? "at least" : "at most"}`,
          });
          row.append(input);
          if (bound === "min") row.append(el("span", { text: "–" }));
        }
        box.append(row);
      } else {
        const counts = shown.facets[facet.name] || {};
        const picked = state.selected.get(facet.name) || new Set();
        const values = Object.keys(counts).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b));
        for (const value of [...picked].sort()) if (!(value in counts)) values.push(value);
        const list = el("ul", { class: "checklist" });
        for (const value of values) {
          const text = facet.type === "bool" ? (value === "true" ? "yes" : "no") : value;
          list.append(el("li", {},
            el("label", { class: picked.has(value) ? "checked" : null },
              el("input", { type: "checkbox", value, checked: picked.has(value), "data-field": facet.name }),
              el("span", { class: "value", text }),
              el("span", { class: "count", text: String(counts[value] || 0) }))));
        }
        if (!values.length) list.append(el("li", { class: "muted", text: "none in these results" }));
        box.append(list);
      }
      els.facets.append(box);
    }
  }

  function renderSuggestions(facets) {
    const byName = Object.fromEntries(facets.fields.map((f) => [f.name, f]));
    const colors = (byName.color || byName.colour || { values: [] }).values.map((v) => v.value);
    const categories = (byName.category || { values: [] }).values.map((v) => v.value);
    const patterns = (byName.pattern || { values: [] }).values.map((v) => v.value).filter((p) => p !== "solid");
    els.suggestions.replaceChildren();
    if (!colors.length || !categories.length) return;
    const picks = [];
    for (let i = 0; i < 4 && i < categories.length; i++) {
      const pattern = patterns.length && i % 2 === 0 ? ` ${patterns[i % patterns.length]}` : "";
      picks.push(`${colors[(i * 3) % colors.length]}${pattern} ${categories[i]}`);
    }
    els.suggestions.append(el("span", { class: "muted", text: "Try:" }));
    for (const text of picks) {
      els.suggestions.append(el("button", {
        type: "button", text, onclick: () => { clearImage(false); els.q.value = text; newSearch(); },
      }));
    }
  }

  async function loadPage() {
    try {
      const [config, catalog] = await Promise.all(["api/ui", "api/facets"].map(async (url) => {
        const response = await fetch(url);
        if (!response.ok) throw new Error(await readError(response));
        return response.json();
      }));
      state.config = config;
      state.catalog = catalog;
      els.info.textContent = `${catalog.documents.toLocaleString()} products · index “${catalog.index}”` +
        (catalog.model ? ` · model ${catalog.model}` : "");
      renderSuggestions(catalog);
    } catch (err) {
      els.facets.replaceChildren(el("p", { class: "muted", text: `Filters unavailable: ${err.message}` }));
      return;
    }
    restore(new URLSearchParams(location.search));
    renderFacets(catalogCounts());
    if (els.q.value.trim()) run({ history: "replace", cursor: history.state && history.state.cursor });
  }

  // ---------------------------------------------------------------- image query
  function setImage(file) {
    if (!file || !(file.type || "").startsWith("image/")) {
      showError("That file is not an image: choose a JPEG, PNG or WebP picture.");
      return;
    }
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.image = file;
    state.imageData = null;
    state.imageSerial += 1;
    state.imageUrl = URL.createObjectURL(file);
    els.preview.src = state.imageUrl;
    els.imageName.textContent = file.name ? `· ${file.name}` : "";
    els.imageQuery.hidden = false;
    els.suggestions.hidden = true;
    els.q.value = "";
    els.q.disabled = true;
    els.q.placeholder = "Searching by image — add a modifier below, or remove the image to search by text";
    newSearch();
  }
  function clearImage(rerun = true) {
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.image = null;
    state.imageUrl = null;
    state.imageData = null;
    els.file.value = "";
    els.modifier.value = "";
    els.imageQuery.hidden = true;
    els.suggestions.hidden = false;
    els.q.disabled = false;
    els.q.placeholder = "Search products, e.g. “red striped t-shirt” — or drop an image";
    if (rerun) {
      showResultsEmpty();
      els.q.focus();
    }
  }
  function showResultsEmpty() {
    els.grid.replaceChildren();
    els.status.textContent = "";
    els.pager.hidden = true;
    els.empty.hidden = false;
    renderFacets(catalogCounts());
  }
  async function imageData() {
    if (state.imageData === null) {
      const bytes = new Uint8Array(await state.image.arrayBuffer());
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      state.imageData = btoa(binary);
    }
    return state.imageData;
  }

  // ---------------------------------------------------------------- search
  /** The request body of a fresh search (no cursor): the query, its filters, facets and collapse. */
  async function body({ except = null, facets = null, k, offset = 0 }) {
    const request = { weights: weights(), fusion: els.fusion.value, k, offset, candidates: Math.max(CANDIDATES, offset + k) };
    if (state.image) {
      request.image = { data: await imageData() };
      const modifier = els.modifier.value.trim();
      if (modifier) request.text = modifier;
    } else {
      request.text = els.q.value.trim();
    }
    request.filters = filters(except);
    request.facets = facets || state.config.facets.map((f) => f.name);
    request.max_values_per_facet = state.config.max_values_per_facet;
    if (state.config.collapse) {
      request.collapse = { field: state.config.collapse, fields: state.config.variant_fields, max_variants: 12 };
    }
    return request;
  }

  async function post(request) {
    const response = await fetch("search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    }).catch((e) => e);
    if (response instanceof Error) throw new Error(`The service cannot be reached: ${response.message}`);
    if (!response.ok) {
      const error = new Error(await readError(response));
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  /**
   * Facet counts as a shop shows them: a field with ticked values counts as if none were ticked
   * (one more request per such field, facets of that field only), so its other values stay
   * visible and can be added; the other fields count the filtered results.
   */
  async function disjunctive() {
    const ticked = state.config.facets.filter((f) => f.type !== "number" && (state.selected.get(f.name) || new Set()).size);
    const answers = await Promise.all(ticked.map(async (f) => post(await body({ except: f.name, facets: [f.name], k: 1 }))));
    return Object.fromEntries(ticked.map((f, i) => [f.name, answers[i].facets[f.name] || {}]));
  }

  /** Start a new search from the controls: page 1, a new history entry. */
  function newSearch() {
    state.page = 1;
    run({ history: "push" });
  }

  /**
   * Run the search for ``state.page`` and show it. ``cursor``: the token that answers this page
   * (else the cache's, else an offset). ``history``: "push" a new entry, "replace" this one, or
   * nothing (the back button brought us here).
   */
  async function run({ history: mode = null, cursor = null } = {}) {
    showError("");
    const text = els.q.value.trim();
    if (!state.image && !text) {
      showError("Type something to search for, or drop an image.");
      return;
    }
    const seq = ++state.seq;
    const key = searchKey();
    const page = state.page;
    const k = Number(els.k.value);
    const known = state.cursors.get(key) || new Map();
    const token = page > 1 ? (cursor || known.get(page) || null) : null;
    const modifier = els.modifier.value.trim();
    const what = state.image ? (modifier ? `the image + “${modifier}”` : "the image") : `“${text}”`;
    els.grid.classList.add("loading");
    let answer;
    let shown;
    try {
      if (token) {
        try {
          answer = await post({ cursor: token, k });
        } catch (err) {
          if (err.status !== 400) throw err; // an expired cursor: the same page by offset
          answer = null;
        }
      }
      if (!answer) {
        const cached = page > 1 ? state.facetCache.get(key) : null;
        const request = await body({ k, offset: (page - 1) * k });
        const [main, own] = await Promise.all([post(request), cached ? null : disjunctive()]);
        answer = main;
        shown = cached || { facets: { ...main.facets, ...own }, stats: main.facets_stats || {} };
      } else {
        shown = state.facetCache.get(key) || { facets: answer.facets, stats: answer.facets_stats || {} };
      }
    } catch (err) {
      if (seq !== state.seq) return;
      els.grid.classList.remove("loading");
      showError(err.message);
      return;
    }
    if (seq !== state.seq) return; // a newer search is under way
    els.grid.classList.remove("loading");
    if (page === 1 || !state.facetCache.has(key)) state.facetCache.set(key, shown);
    if (answer.next_cursor) {
      known.set(page + 1, answer.next_cursor);
      state.cursors.set(key, known);
    }
    const entry = { cursor: token, image: state.image ? state.imageSerial : null };
    if (mode === "push") window.history.pushState(entry, "", pageUrl(page));
    else if (mode === "replace") window.history.replaceState(entry, "", pageUrl(page));
    renderFacets(shown);
    renderResults(answer, what, page, k);
    els.grid.dataset.answer = String(seq); // which search the grid shows (tests wait on it)
  }

  function goToPage(page) {
    state.page = page;
    run({ history: "push" });
    window.scrollTo({ top: 0 });
  }

  // ---------------------------------------------------------------- results
  function scoreRow(name, value, width) {
    const bar = el("div", { class: `bar ${name}` }, el("span"));
    bar.firstChild.style.width = `${Math.max(0, Math.min(1, width || 0)) * 100}%`;
    return [
      el("span", { class: "label", text: name }),
      bar,
      el("span", { class: value === null || value === undefined ? "value missing" : "value", text: fmt(value) }),
    ];
  }

  function renderResults(answer, what, page, k) {
    els.empty.hidden = true;
    const hits = answer.hits;
    const fusedBy = answer.fused_by === "engine" ? "by the engine" : "client-side";
    const total = answer.total || { value: hits.length, relation: "eq" };
    const unit = answer.collapsed_by ? "product" : "result";
    const count = `${total.relation === "gte" ? "at least " : ""}${total.value.toLocaleString()} ${unit}${total.value === 1 ? "" : "s"}`;
    const first = (page - 1) * k + 1;
    els.status.replaceChildren(
      el("b", { text: count }),
      ` for ${what} · ${hits.length ? `${first}–${first + hits.length - 1}` : "none"} shown · ` +
        `${answer.fusion.toUpperCase()} fusion ${fusedBy} · ${Math.round(answer.took_ms)} ms`,
    );
    const maxBm25 = Math.max(1e-9, ...hits.map((h) => h.signals.bm25 || 0));
    const maxScore = Math.max(1e-9, ...hits.map((h) => h.score));
    els.grid.replaceChildren(...hits.map((hit) => card(hit, maxBm25, maxScore)));
    if (!hits.length) {
      els.grid.replaceChildren(el("p", { class: "muted", text: "No products match: loosen the filters or try other words." }));
    }
    renderPager(page, Math.max(page, Math.ceil(total.value / k)), Boolean(answer.next_cursor));
  }

  function renderPager(page, pages, hasNext) {
    els.pager.replaceChildren();
    els.pager.hidden = pages <= 1 && !hasNext;
    const button = (text, target, attrs = {}) =>
      el("button", { type: "button", text, "data-page": target, onclick: () => goToPage(target), ...attrs });
    els.pager.append(button("‹ Previous", page - 1, { class: "prev", disabled: page <= 1 }));
    const lo = Math.max(1, Math.min(page - 4, pages - 8));
    const hi = Math.min(pages, lo + 8);
    for (let p = lo; p <= hi; p++) {
      els.pager.append(button(String(p), p, { class: p === page ? "num current" : "num", "aria-current": p === page ? "page" : null }));
    }
    els.pager.append(button("Next ›", page + 1, { class: "next", disabled: !hasNext }));
  }

  const COLOR_FIELDS = ["color", "colour"];
  function swatchColor(payload) {
    for (const key of COLOR_FIELDS) {
      const value = payload[key];
      if (typeof value === "string" && window.CSS && CSS.supports("color", value)) return value;
    }
    return null;
  }

  function card(hit, maxBm25, maxScore) {
    const looks = [{ id: hit.id, payload: hit.payload || {}, image_url: hit.image_url }];
    for (const v of hit.variants || []) looks.push({ id: v.id, payload: v.payload || {}, image_url: v.image_url });

    const img = hit.image_url ? el("img", { loading: "lazy" }) : null;
    const thumb = el("div", { class: "thumb" });
    if (img) {
      thumb.append(img);
      thumb.append(el("button", {
        type: "button", class: "similar", text: "More like this", title: "Search with this product's photo",
        onclick: () => moreLikeThis(shownLook().image_url || hit.image_url),
      }));
    } else {
      thumb.append(el("div", { class: "placeholder", text: "no image" }));
    }
    thumb.append(el("span", { class: "rank", text: `#${hit.rank}` }));
    if (hit.rule) thumb.append(el("span", { class: "rule", text: "featured", title: `merchandising rule ${hit.rule}` }));

    const title = el("h3", { class: "title" });
    const price = el("span", { class: "price" });
    const meta = el("div", { class: "meta" }, price);
    const stock = el("span", { class: "stock" });
    meta.append(stock);
    const chips = el("div", { class: "chips" });
    const s = hit.signals;
    const scores = el("div", { class: "scores", title: "each signal's raw score; score = the ranking score (fused, boosted)" },
      ...scoreRow("image", s.image, s.image),
      ...scoreRow("text", s.text, s.text),
      ...scoreRow("bm25", s.bm25, (s.bm25 || 0) / maxBm25),
      ...scoreRow("fused", hit.score, hit.score / maxScore),
    );
    const body = el("div", { class: "card-body" }, title, meta, chips);
    const article = el("article", { class: "card", "data-id": hit.id, "data-group": hit.group }, thumb, body);

    const shownLook = () => looks.find((l) => l.id === article.dataset.shown) || looks[0];
    function show(look) {
      const p = look.payload;
      article.dataset.shown = look.id;
      const name = p.title || p.caption || look.id;
      title.textContent = name;
      if (img) {
        img.src = look.image_url || hit.image_url;
        img.alt = name;
      }
      price.textContent = formatPrice(p.price);
      stock.hidden = typeof p.in_stock !== "boolean";
      stock.className = p.in_stock ? "stock" : "stock out";
      stock.textContent = p.in_stock ? "in stock" : "out of stock";
      chips.replaceChildren();
      for (const key of ["category", "color", "pattern", "material", "brand"]) {
        if (p[key] !== undefined && p[key] !== null && typeof p[key] !== "object") {
          chips.append(el("span", { class: "chip", text: String(p[key]) }));
        }
      }
      for (const swatch of article.querySelectorAll(".swatch")) {
        swatch.setAttribute("aria-pressed", String(swatch.dataset.id === look.id));
      }
    }

    if (looks.length > 1) {
      const swatches = el("div", { class: "swatches", role: "group", "aria-label": "variants" });
      for (const look of looks) {
        const p = look.payload;
        const name = [p.color || p.colour, p.title].filter((x) => typeof x === "string").join(" · ") || look.id;
        const swatch = el("button", {
          type: "button", class: "swatch", "data-id": look.id, title: name, "aria-label": name, "aria-pressed": "false",
          onclick: () => show(look),
        });
        if (look.image_url) swatch.append(el("img", { src: look.image_url, alt: "", loading: "lazy" }));
        const color = swatchColor(p);
        if (color) swatch.style.borderColor = color;
        swatches.append(swatch);
      }
      body.append(swatches);
    }
    body.append(scores);
    show(looks[0]);
    return article;
  }

  async function moreLikeThis(url) {
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const blob = await response.blob();
      const name = (url.split("/").pop() || "product.jpg").split("?")[0];
      setImage(new File([blob], decodeURIComponent(name), { type: blob.type || "image/jpeg" }));
      window.scrollTo({ top: 0, behavior: "smooth" });
    } catch (err) {
      showError(`Cannot load that product's image: ${err.message}`);
    }
  }

  // ---------------------------------------------------------------- events
  els.form.addEventListener("submit", (event) => { event.preventDefault(); newSearch(); });
  els.file.addEventListener("change", () => { if (els.file.files.length) setImage(els.file.files[0]); });
  els.clearImage.addEventListener("click", () => clearImage(true));
  els.modifier.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); newSearch(); } });
  els.resetFilters.addEventListener("click", () => {
    state.selected = new Map();
    state.ranges = new Map();
    rerun();
    renderFacets(state.shown || catalogCounts());
  });

  let timer = null;
  function rerun() {
    clearTimeout(timer);
    timer = setTimeout(() => { if (state.image || els.q.value.trim()) newSearch(); }, 250);
  }
  for (const s of sliders) {
    s.input.addEventListener("input", () => { s.out.textContent = Number(s.input.value).toFixed(1); });
    s.input.addEventListener("change", rerun);
  }
  els.fusion.addEventListener("change", rerun);
  els.k.addEventListener("change", rerun);
  els.facets.addEventListener("change", (event) => {
    const input = event.target;
    const field = input.dataset.field;
    if (!field) return;
    if (input.type === "checkbox") {
      const picked = state.selected.get(field) || new Set();
      if (input.checked) picked.add(input.value);
      else picked.delete(input.value);
      if (picked.size) state.selected.set(field, picked);
      else state.selected.delete(field);
      input.closest("label").classList.toggle("checked", input.checked);
      if (state.image || els.q.value.trim()) newSearch();
    } else {
      const range = state.ranges.get(field) || { min: "", max: "" };
      range[input.dataset.bound] = input.value.trim();
      state.ranges.set(field, range);
      rerun();
    }
  });
  els.facets.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.dataset.bound) event.target.blur(); // a range applies on Enter
  });
  window.addEventListener("popstate", (event) => {
    const entry = event.state || {};
    restore(new URLSearchParams(location.search));
    if (entry.image && entry.image === state.imageSerial && state.image) {
      run({ cursor: entry.cursor });
      return;
    }
    if (state.image) clearImage(false);
    if (els.q.value.trim()) run({ cursor: entry.cursor });
    else showResultsEmpty();
  });

  // drag and drop: anywhere on the page
  let dragDepth = 0;
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    dragDepth += 1;
    els.overlay.hidden = false;
    els.drop.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) { els.overlay.hidden = true; els.drop.classList.remove("dragging"); }
  });
  window.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    els.overlay.hidden = true;
    els.drop.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file) setImage(file);
  });

  loadPage();
  els.q.focus();
})();
