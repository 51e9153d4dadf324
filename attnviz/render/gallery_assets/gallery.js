
"use strict";
(() => {
  const t0 = performance.now();
  const data = JSON.parse(document.getElementById("data").textContent);
  const items = data.items;
  const n = items.length;
  const $ = (id) => document.getElementById(id);
  const grid = $("grid"), sortSel = $("sort"), dirSel = $("dir"), filterSel = $("filter");
  const search = $("search"), layerSel = $("layer"), viewer = $("viewer");
  const STAT = Object.fromEntries(data.stats.map((k, i) => [k, i]));
  const STAT_LABEL = { max: "peak", entropy: "entropy", mass_top10: "top-10%", prob: "p" };
  const fmt = (v, digits = 3) => (v === null || v === undefined ? "\u2013" : v.toFixed(digits));
  const pct = (p) =>
    p === null || p === undefined ? "" : (100 * p).toFixed(p >= 0.995 ? 0 : 1) + "%";
  const plural = (k, word) => k + " " + word + (k === 1 ? "" : "s");
  const top1 = items.map((it) => (it.top.length ? it.top[0][0] : "(no class)"));
  const hay = items.map((it, i) => (it.n + "\n" + top1[i]).toLowerCase());

  document.title = "attnviz gallery \u2013 " + data.title;
  $("title").textContent = data.title;

  // A card shows the chosen layer's map when its figure has a thumbnail of it (a figure of
  // several layers), else the whole figure: [url, width, height].
  const thumbOf = (i, layer) => {
    const it = items[i];
    // Own keys only: a layer named "constructor" must not find Object's.
    return (it.lt && Object.prototype.hasOwnProperty.call(it.lt, layer) && it.lt[layer]) || [it.t, it.w, it.h];
  };
  // Default layer: the deepest one listed, nearest to the decision.
  const firstLayer = data.layers.length ? data.layers[data.layers.length - 1] : "";

  // Thumbnails of one run share an aspect ratio: reserve it so lazy images never shift.
  function reserveAspect(layer) {
    const ratios = items.map((_, i) => { const t = thumbOf(i, layer); return t[1] / t[2]; })
      .sort((a, b) => a - b);
    const ar = n ? ratios[n >> 1] : 3;
    document.documentElement.style.setProperty("--ar", String(ar));
    // One-row triptychs are wide and short: give them wider cards so the panels stay legible.
    document.documentElement.style.setProperty("--card", ar >= 2.5 ? "420px" : "300px");
  }
  reserveAspect(firstLayer);

  // Names sort once, naturally ("img2" before "img10"); other sorts use the rank to break ties.
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const nameRank = new Float64Array(n);
  Array.from(items.keys()).sort((a, b) => collator.compare(items[a].n, items[b].n))
    .forEach((idx, rank) => { nameRank[idx] = rank; });

  // --- the cards: built once; sorting and filtering only move or hide them -------------------
  const cards = new Array(n), stats = new Array(n), imgs = new Array(n);
  const frag = document.createDocumentFragment();
  for (let i = 0; i < n; i++) {
    const it = items[i];
    const a = document.createElement("a");
    a.className = "item";
    a.href = it.f;
    a.dataset.i = i;
    a.title = it.in || it.n;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    const [src, w, h] = thumbOf(i, firstLayer);
    img.width = w;
    img.height = h;
    img.alt = it.n;
    img.src = src;
    const cap = document.createElement("span");
    cap.className = "cap";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = it.n;
    const stat = document.createElement("span");
    stat.className = "stat";
    const cls = document.createElement("span");
    cls.className = "cls";
    cls.textContent = top1[i] + " ";
    if (it.top.length) {
      const b = document.createElement("b");
      b.textContent = pct(it.top[0][1]);
      cls.append(b);
    }
    cap.append(name, stat, cls);
    a.append(img, cap);
    cards[i] = a;
    stats[i] = stat;
    imgs[i] = img;
    frag.append(a);
  }
  grid.append(frag);

  // --- controls ----------------------------------------------------------------------------
  const classCounts = new Map();
  for (const c of top1) classCounts.set(c, (classCounts.get(c) || 0) + 1);
  filterSel.append(new Option("all classes (" + n + ")", ""));
  [...classCounts].sort((a, b) => b[1] - a[1] || collator.compare(a[0], b[0]))
    .forEach(([c, k]) => filterSel.append(new Option(c + " (" + k + ")", c)));

  data.layers.forEach((l) => layerSel.append(new Option(l, l)));
  if (data.layers.length) layerSel.value = firstLayer;
  $("layer-box").hidden = data.layers.length < 2;

  function keyValues(key, layer) {
    const v = new Float64Array(n);
    if (key === "name") return nameRank;
    for (let i = 0; i < n; i++) {
      let x = null;
      if (key === "prob") x = items[i].top.length ? items[i].top[0][1] : null;
      else { const s = items[i].m[layer]; x = s ? s[STAT[key]] : null; }
      v[i] = x === null || x === undefined ? NaN : x;
    }
    return v;
  }

  let order = Array.from(items.keys());
  let visible = order;
  let lastKey = "";
  let thumbLayer = firstLayer;

  function showLayer(layer) {
    for (let i = 0; i < n; i++) {
      const [src, w, h] = thumbOf(i, layer);
      // Cards without a thumbnail of either layer keep their image: no reload.
      if (imgs[i].getAttribute("src") === src) continue;
      imgs[i].width = w;
      imgs[i].height = h;
      imgs[i].src = src;
    }
    reserveAspect(layer);
    thumbLayer = layer;
  }

  function apply() {
    const t = performance.now();
    const key = sortSel.value, layer = layerSel.value, desc = dirSel.value === "desc";
    if (layer !== thumbLayer) showLayer(layer);
    const sortKey = key + "\n" + layer + "\n" + desc;
    if (sortKey !== lastKey) {
      const v = keyValues(key, layer);
      // Missing values (old manifests, a layer an image lacks) sort last in both directions.
      order = Array.from(items.keys()).sort((a, b) => {
        const x = v[a], y = v[b], mx = Number.isNaN(x), my = Number.isNaN(y);
        if (mx || my) return mx === my ? nameRank[a] - nameRank[b] : (mx ? 1 : -1);
        return (desc ? y - x : x - y) || nameRank[a] - nameRank[b];
      });
      const f = document.createDocumentFragment();
      for (const i of order) f.append(cards[i]);
      grid.append(f);
      const label = STAT_LABEL[key];
      for (let i = 0; i < n; i++) {
        stats[i].textContent = label ? label + " " + fmt(Number.isNaN(v[i]) ? null : v[i]) : "";
      }
      lastKey = sortKey;
    }
    const cls = filterSel.value, q = search.value.trim().toLowerCase();
    visible = [];
    for (const i of order) {
      const show = (!cls || top1[i] === cls) && (!q || hay[i].includes(q));
      if (cards[i].hidden === show) cards[i].hidden = !show;
      if (show) visible.push(i);
    }
    const total = n.toLocaleString("en-US");
    const word = n === 1 ? " image" : " images";
    $("count").textContent = visible.length === n ? total + word
      : visible.length.toLocaleString("en-US") + " of " + total + word;
    $("empty").hidden = visible.length > 0 || n === 0;
    window.attnvizGallery.applyMs = performance.now() - t;
  }

  sortSel.addEventListener("change", () => {
    // Names read best A to Z; for a statistic or a probability the largest come first.
    dirSel.value = sortSel.value === "name" ? "asc" : "desc";
    apply();
  });
  for (const el of [dirSel, filterSel, layerSel]) el.addEventListener("change", apply);
  search.addEventListener("input", apply);

  // --- problems: failed inputs and figures left out -------------------------------------------
  const problems = $("problems");
  if (data.failed.length || data.notes.length) {
    const parts = [];
    if (data.failed.length) parts.push(plural(data.failed.length, "input") + " failed");
    if (data.notes.length) parts.push(plural(data.notes.length, "figure") + " left out");
    problems.querySelector("summary").textContent = parts.join(" \u00b7 ");
    const ul = problems.querySelector("ul");
    for (const [input, error] of data.failed) {
      const li = document.createElement("li");
      li.textContent = input + ": " + error;
      ul.append(li);
    }
    for (const note of data.notes) {
      const li = document.createElement("li");
      li.textContent = note;
      ul.append(li);
    }
    problems.hidden = false;
  }

  // --- the viewer --------------------------------------------------------------------------
  let current = -1;
  const vimg = $("vimg");

  function show(i) {
    const it = items[i];
    current = i;
    const pos = visible.indexOf(i);
    viewer.querySelector(".vname").textContent = it.n;
    viewer.querySelector(".vpos").textContent = pos >= 0 ? (pos + 1) + " / " + visible.length : "";
    vimg.src = it.f;
    vimg.alt = it.n;
    $("vopen").href = it.f;
    const ol = viewer.querySelector(".top5");
    ol.replaceChildren(...it.top.map(([label, p]) => {
      const li = document.createElement("li");
      const l = document.createElement("span");
      l.textContent = label;
      const v = document.createElement("span");
      v.className = "p";
      v.textContent = pct(p);
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = (100 * (p || 0)).toFixed(1) + "%";
      bar.append(fill);
      li.append(l, v, bar);
      return li;
    }));
    const tbody = viewer.querySelector(".layers tbody");
    tbody.replaceChildren(...Object.entries(it.m).map(([layer, s]) => {
      const tr = document.createElement("tr");
      if (layer === layerSel.value) tr.className = "current";
      const name = document.createElement("td");
      name.append(...breakAfterDots(layer));
      tr.append(name);
      for (const k of ["max", "entropy", "mass_top10", "mean"]) {
        const text = fmt(s[STAT[k]]);
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }));
    const meta = [];
    if (it.in) meta.push("input " + it.in);
    if (it.size) meta.push(it.size[0] + "\u00d7" + it.size[1] + " px");
    if (it.model) meta.push("model " + it.model);
    viewer.querySelector(".vmeta").textContent = meta.join(" \u00b7 ");
    if (!viewer.open) viewer.showModal();
    // Warm the neighbours so arrow keys flip at once.
    for (const d of [-1, 1]) {
      const j = visible[pos + d];
      if (j !== undefined) new Image().src = items[j].f;
    }
  }

  // Long module paths wrap at their dots ("layer4.1.attention"), not mid-word.
  function breakAfterDots(text) {
    const parts = [];
    text.split(".").forEach((part, k, all) => {
      parts.push(k < all.length - 1 ? part + "." : part);
      if (k < all.length - 1) parts.push(document.createElement("wbr"));
    });
    return parts;
  }

  function step(d) {
    const pos = visible.indexOf(current);
    const j = visible[pos + d];
    if (j !== undefined) show(j);
  }

  grid.addEventListener("click", (e) => {
    const a = e.target.closest(".item");
    // Ctrl/middle clicks keep their usual meaning: the figure in a new tab.
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    show(Number(a.dataset.i));
  });
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("close").addEventListener("click", () => viewer.close());
  // A click on the dimmed backdrop lands on the dialog itself: close, as Escape does.
  viewer.addEventListener("click", (e) => { if (e.target === viewer) viewer.close(); });
  viewer.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
    else if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
  });
  viewer.addEventListener("close", () => {
    vimg.removeAttribute("src");
    if (cards[current]) cards[current].focus({ preventScroll: true });
  });

  window.attnvizGallery = { items: n, buildMs: 0, applyMs: 0, readyAt: 0 };
  apply();
  window.attnvizGallery.buildMs = performance.now() - t0;
  window.attnvizGallery.readyAt = performance.now();  // since navigation started
  document.documentElement.dataset.ready = "true";
})();
