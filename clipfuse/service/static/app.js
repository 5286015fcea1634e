/* clipfuse web search page: plain JS, no build step. Talks to the same service's API. */
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search-form"), q: $("q"), file: $("file-input"), drop: $("drop-zone"), overlay: $("drop-overlay"),
    imageQuery: $("image-query"), preview: $("image-preview"), imageName: $("image-name"), modifier: $("modifier"),
    clearImage: $("clear-image"), grid: $("grid"), status: $("status"), error: $("error"), empty: $("empty"),
    filters: $("filters"), resetFilters: $("reset-filters"), fusion: $("fusion"), k: $("k"),
    info: $("index-info"), suggestions: $("suggestions"),
  };
  const sliders = ["image", "text", "bm25"].map((name) => ({ name, input: $(`w-${name}`), out: $(`w-${name}-out`) }));

  const state = { image: null, imageUrl: null, facets: null, lastQuery: null, seq: 0 };

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

  // ---------------------------------------------------------------- filters
  function filterConditions() {
    const out = [];
    for (const node of els.filters.querySelectorAll("[data-field]")) {
      const field = node.dataset.field;
      const type = node.dataset.type;
      if (type === "keyword") {
        if (node.value !== "") out.push({ field, op: "eq", value: node.value });
      } else if (type === "bool") {
        if (node.value !== "") out.push({ field, op: "eq", value: node.value === "true" });
      } else if (type === "number" && node.value !== "") {
        const value = Number(node.value);
        if (Number.isFinite(value)) out.push({ field, op: node.dataset.op, value });
      }
    }
    return out;
  }
  const OPS = { eq: "=", ne: "!=", lt: "<", lte: "<=", gt: ">", gte: ">=" };
  const toCli = (c) => `${c.field}${OPS[c.op]}${c.value}`;

  function renderFilters(facets) {
    els.filters.replaceChildren();
    if (!facets.fields.length) {
      els.filters.append(el("p", { class: "muted", text: "This index has no filterable attributes." }));
      return;
    }
    for (const field of facets.fields) {
      const id = `f-${field.name}`;
      const box = el("div", { class: "filter" }, el("label", { for: id, text: field.name.replace(/_/g, " ") }));
      if (field.type === "number") {
        const range = el("div", { class: "range" });
        const lo = el("input", {
          id, type: "number", step: "any", placeholder: field.min === null ? "min" : `${Math.floor(field.min)}`,
          "data-field": field.name, "data-type": "number", "data-op": "gte", "aria-label": `${field.name} at least`,
        });
        const hi = el("input", {
          type: "number", step: "any", placeholder: field.max === null ? "max" : `${Math.ceil(field.max)}`,
          "data-field": field.name, "data-type": "number", "data-op": "lte", "aria-label": `${field.name} at most`,
        });
        range.append(lo, el("span", { text: "–" }), hi);
        box.append(range);
      } else if (field.type === "bool") {
        box.append(
          el("select", { id, "data-field": field.name, "data-type": "bool" },
            el("option", { value: "", text: "Any" }),
            el("option", { value: "true", text: "Yes" }),
            el("option", { value: "false", text: "No" })),
        );
      } else {
        const select = el("select", { id, "data-field": field.name, "data-type": "keyword" },
          el("option", { value: "", text: "Any" }));
        const values = [...field.values].sort((a, b) => String(a.value).localeCompare(String(b.value)));
        for (const v of values) select.append(el("option", { value: String(v.value), text: `${v.value} (${v.count})` }));
        box.append(select);
      }
      els.filters.append(box);
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
        type: "button", text, onclick: () => { clearImage(false); els.q.value = text; search(); },
      }));
    }
  }

  async function loadFacets() {
    try {
      const response = await fetch("api/facets");
      if (!response.ok) throw new Error(await readError(response));
      const facets = await response.json();
      state.facets = facets;
      els.info.textContent = `${facets.documents.toLocaleString()} products · index “${facets.index}”` +
        (facets.model ? ` · model ${facets.model}` : "");
      renderFilters(facets);
      renderSuggestions(facets);
    } catch (err) {
      els.filters.replaceChildren(el("p", { class: "muted", text: `Filters unavailable: ${err.message}` }));
    }
  }

  // ---------------------------------------------------------------- image query
  function setImage(file) {
    if (!file || !(file.type || "").startsWith("image/")) {
      showError("That file is not an image: choose a JPEG, PNG or WebP picture.");
      return;
    }
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.image = file;
    state.imageUrl = URL.createObjectURL(file);
    els.preview.src = state.imageUrl;
    els.imageName.textContent = file.name ? `· ${file.name}` : "";
    els.imageQuery.hidden = false;
    els.suggestions.hidden = true;
    els.q.value = "";
    els.q.disabled = true;
    els.q.placeholder = "Searching by image — add a modifier below, or remove the image to search by text";
    search();
  }
  function clearImage(rerun = true) {
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.image = null;
    state.imageUrl = null;
    els.file.value = "";
    els.modifier.value = "";
    els.imageQuery.hidden = true;
    els.suggestions.hidden = false;
    els.q.disabled = false;
    els.q.placeholder = "Search products, e.g. “red striped t-shirt” — or drop an image";
    if (rerun) {
      els.grid.replaceChildren();
      els.status.textContent = "";
      els.empty.hidden = false;
      els.q.focus();
    }
  }

  // ---------------------------------------------------------------- search
  async function search() {
    showError("");
    const seq = ++state.seq;
    const w = weights();
    const k = Number(els.k.value);
    const fusion = els.fusion.value;
    const filters = filterConditions();
    let response;
    let label;
    if (state.image) {
      const form = new FormData();
      form.append("file", state.image, state.image.name || "query.jpg");
      const modifier = els.modifier.value.trim();
      if (modifier) form.append("text", modifier);
      form.append("weights", `image=${w.image},text=${w.text},bm25=${w.bm25}`);
      form.append("fusion", fusion);
      form.append("k", String(k));
      for (const c of filters) form.append("filter", toCli(c));
      label = modifier ? `the image + “${modifier}”` : "the image";
      els.grid.classList.add("loading");
      response = await fetch("search/image", { method: "POST", body: form }).catch((e) => e);
    } else {
      const text = els.q.value.trim();
      if (!text) {
        showError("Type something to search for, or drop an image.");
        return;
      }
      label = `“${text}”`;
      els.grid.classList.add("loading");
      response = await fetch("search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text, weights: w, fusion, k, filters }),
      }).catch((e) => e);
    }
    if (seq !== state.seq) return; // a newer search is under way
    els.grid.classList.remove("loading");
    if (response instanceof Error) {
      showError(`The service cannot be reached: ${response.message}`);
      return;
    }
    if (!response.ok) {
      showError(await readError(response));
      return;
    }
    const body = await response.json();
    state.lastQuery = label;
    renderResults(body, label);
  }

  function scoreRow(name, value, width) {
    const bar = el("div", { class: `bar ${name}` }, el("span"));
    bar.firstChild.style.width = `${Math.max(0, Math.min(1, width || 0)) * 100}%`;
    return [
      el("span", { class: "label", text: name }),
      bar,
      el("span", { class: value === null || value === undefined ? "value missing" : "value", text: fmt(value) }),
    ];
  }

  function renderResults(body, label) {
    els.empty.hidden = true;
    const hits = body.hits;
    const fusedBy = body.fused_by === "engine" ? "by the engine" : "client-side";
    els.status.replaceChildren(
      el("b", { text: `${hits.length} result${hits.length === 1 ? "" : "s"}` }),
      ` for ${label} · ${body.fusion.toUpperCase()} fusion ${fusedBy} · ${Math.round(body.took_ms)} ms`,
    );
    const maxBm25 = Math.max(1e-9, ...hits.map((h) => h.signals.bm25 || 0));
    const maxFused = Math.max(1e-9, ...hits.map((h) => h.score));
    const cards = hits.map((hit) => card(hit, maxBm25, maxFused));
    els.grid.replaceChildren(...cards);
    if (!hits.length) {
      els.grid.replaceChildren(el("p", { class: "muted", text: "No products match: loosen the filters or try other words." }));
    }
  }

  function card(hit, maxBm25, maxFused) {
    const p = hit.payload || {};
    const title = p.title || p.caption || hit.id;
    const thumb = el("div", { class: "thumb" });
    if (hit.image_url) {
      thumb.append(el("img", { src: hit.image_url, alt: title, loading: "lazy" }));
      thumb.append(el("button", {
        type: "button", class: "similar", text: "More like this", title: "Search with this product's photo",
        onclick: () => moreLikeThis(hit),
      }));
    } else {
      thumb.append(el("div", { class: "placeholder", text: "no image" }));
    }
    thumb.append(el("span", { class: "rank", text: `#${hit.rank}` }));

    const chips = el("div", { class: "chips" });
    for (const key of ["category", "color", "pattern", "material", "brand"]) {
      if (p[key] !== undefined && typeof p[key] !== "object") chips.append(el("span", { class: "chip", text: String(p[key]) }));
    }
    const meta = el("div", { class: "meta" }, el("span", { class: "price", text: formatPrice(p.price) }));
    if (typeof p.in_stock === "boolean") {
      meta.append(el("span", { class: p.in_stock ? "stock" : "stock out", text: p.in_stock ? "in stock" : "out of stock" }));
    }
    const s = hit.signals;
    const scores = el("div", { class: "scores", title: "each signal's raw score; fused = the ranking score" },
      ...scoreRow("image", s.image, s.image),
      ...scoreRow("text", s.text, s.text),
      ...scoreRow("bm25", s.bm25, (s.bm25 || 0) / maxBm25),
      ...scoreRow("fused", hit.score, hit.score / maxFused),
    );
    return el("article", { class: "card", "data-id": hit.id },
      thumb,
      el("div", { class: "card-body" }, el("h3", { class: "title", text: title }), meta, chips, scores),
    );
  }

  async function moreLikeThis(hit) {
    try {
      const response = await fetch(hit.image_url);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const blob = await response.blob();
      const name = (hit.image_url.split("/").pop() || "product.jpg").split("?")[0];
      setImage(new File([blob], decodeURIComponent(name), { type: blob.type || "image/jpeg" }));
      window.scrollTo({ top: 0, behavior: "smooth" });
    } catch (err) {
      showError(`Cannot load that product's image: ${err.message}`);
    }
  }

  // ---------------------------------------------------------------- events
  els.form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
  els.file.addEventListener("change", () => { if (els.file.files.length) setImage(els.file.files[0]); });
  els.clearImage.addEventListener("click", () => clearImage(true));
  els.modifier.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); search(); } });
  els.resetFilters.addEventListener("click", () => {
    for (const node of els.filters.querySelectorAll("[data-field]")) node.value = "";
    rerun();
  });

  let timer = null;
  function rerun() {
    clearTimeout(timer);
    timer = setTimeout(() => { if (state.image || els.q.value.trim()) search(); }, 250);
  }
  for (const s of sliders) {
    s.input.addEventListener("input", () => { s.out.textContent = Number(s.input.value).toFixed(1); });
    s.input.addEventListener("change", rerun);
  }
  els.fusion.addEventListener("change", rerun);
  els.k.addEventListener("change", rerun);
  els.filters.addEventListener("change", rerun);

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

  loadFacets();
  els.q.focus();
})();
