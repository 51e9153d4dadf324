"""The gallery of an output folder: one index.html to browse, filter and sort its figures.

The page is self-contained (inline CSS and JS, no network) so it works from ``file://``, on
a laptop that copied the folder, and in a sandbox. Its data is the manifest, embedded as
JSON; thumbnails live under ``out/.thumbs/`` and are re-made only when their figure changed.
A figure of several layers whose record gives ``map_boxes`` also gets one thumbnail per
layer, cropped to that layer's map panel: the cards show the layer chosen in the page's menu.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from attnviz.errors import AttnvizError, OutputError
from attnviz.io.manifest import MANIFEST_NAME, read_manifest
from attnviz.io.write import atomic_write_bytes, write_image

INDEX_NAME = "index.html"
THUMBS_DIR = ".thumbs"
# Thumbnails fit this box: sharp enough at the page's 300-420 CSS px card widths.
THUMB_BOX = 480
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
# Which output a card shows: the whole figure, else (--layout separate) the map panel.
PREFERRED_OUTPUTS = ("figure", "map")
# Per-layer statistics the page sorts by and shows, in this order in the embedded JSON.
STAT_KEYS = ("max", "entropy", "mass_top10", "mean", "std", "min")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GalleryResult:
    """What write_gallery did: the page it wrote and what went into it."""

    path: Path
    items: int
    failed: int
    thumbnails_made: int
    notes: list[str] = field(default_factory=list)  # figures left out of the page, and why


Box = tuple[int, int, int, int]  # (x, y, width, height) in the figure's pixels


@dataclass(frozen=True)
class _Candidate:
    """A manifest record with an image output, before its thumbnail is known to exist."""

    name: str  # the shown output's path relative to the output folder, POSIX style
    figure: Path
    thumb: Path
    record: Mapping[str, Any]
    # Per layer: its map's box in the figure and the thumbnail cropped to it.
    layer_thumbs: dict[str, tuple[Box, Path]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Thumb:
    width: int
    height: int
    made: int  # thumbnails written for this candidate: its own and its layers'
    layers: dict[str, tuple[Path, int, int]] = field(default_factory=dict)  # path, width, height


def write_gallery(out: Path, progress: Progress | None = None) -> GalleryResult:
    """Write ``out/index.html`` (and the thumbnails it shows) for an attnviz output folder.

    ``progress(done, total)`` is called as thumbnails are checked or made. Raises
    AttnvizError when ``out`` is not an output folder (missing, or no manifest), and
    OutputError when the folder cannot be written.
    """
    out = Path(out)
    records = _read_records(out)
    failed = [r for r in records if "error" in r and not r.get("outputs")]
    candidates, notes = _collect_candidates(out, records)
    thumbs = _ensure_thumbnails(candidates, notes, progress)
    entries = [(c, thumbs[c.name]) for c in candidates if c.name in thumbs]
    page = _render_page(out.resolve().name, entries, out, failed, notes)
    index = out / INDEX_NAME
    atomic_write_bytes(index, page.encode("utf-8"))
    made = sum(t.made for t in thumbs.values())
    return GalleryResult(index, len(entries), len(failed), made, notes)


def _read_records(out: Path) -> list[dict[str, Any]]:
    if not out.is_dir():
        raise AttnvizError(f"{out}: no such output folder")
    manifest = out / MANIFEST_NAME
    if not manifest.is_file():
        raise AttnvizError(
            f"{out}: no {MANIFEST_NAME} here; is this a folder written by `attnviz run`?"
        )
    return read_manifest(manifest)


def _shown_output(outputs: Mapping[str, Any]) -> str | None:
    """The output a card shows: the figure, else a map panel, else any other image output.

    ``--layout separate`` names panels "map", or "<layer>:map" with several layers (the
    deepest one is preferred, as in the page); "-key" outputs are bare colour bars.
    """
    images = {
        key: value
        for key, value in outputs.items()
        if isinstance(value, str) and PurePosixPath(value).suffix.lower() in IMAGE_SUFFIXES
    }
    layer_maps = [key for key in images if str(key).endswith(":map")]
    panels = [key for key in images if not str(key).endswith("-key")]
    for key in [*PREFERRED_OUTPUTS, *layer_maps[::-1], *panels, *images]:
        if key in images:
            return images[key]
    return None


def _inside(rel: str) -> bool:
    """Whether ``rel`` stays inside the output folder (a hand-edited manifest may say '../x')."""
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts and bool(path.parts)


def _thumb_path(out: Path, rel: str, taken: set[Path]) -> Path:
    thumb = out / THUMBS_DIR / PurePosixPath(rel).with_suffix(".jpg")
    if thumb in taken:  # "a.png" and "a.webp" side by side: keep their thumbnails apart
        thumb = out / THUMBS_DIR / f"{rel}.jpg"
    taken.add(thumb)
    return thumb


def _map_boxes(record: Mapping[str, Any], rel: str) -> dict[str, Box]:
    """The record's map boxes when ``rel`` is its figure of several layers, else none.

    A one-layer figure is its own best thumbnail; other outputs (``--layout separate``)
    have no boxes. Boxes that are not four whole numbers are skipped (a hand-edited line).
    """
    boxes = record.get("map_boxes")
    outputs = record.get("outputs")
    if not isinstance(boxes, Mapping) or len(boxes) < 2 or not isinstance(outputs, Mapping):
        return {}
    if outputs.get("figure") != rel:
        return {}
    valid: dict[str, Box] = {}
    for layer, box in boxes.items():
        if (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in box)
        ):
            valid[str(layer)] = (box[0], box[1], box[2], box[3])
    return valid


def _layer_thumb_paths(
    out: Path, rel: str, layers: Iterable[str], taken: set[Path]
) -> dict[str, Path]:
    """``.thumbs/<figure>@<layer>.jpg`` per layer, the layer's name made safe for a file name.

    attnviz names no output with "@"; a clash left over (two names made safe alike, or
    an input named so) gets a number, so no two thumbnails of a page share a file.
    """
    paths: dict[str, Path] = {}
    for layer in layers:
        stem = f"{rel}@{re.sub(r'[^A-Za-z0-9._-]', '_', layer)}"
        thumb, k = out / THUMBS_DIR / f"{stem}.jpg", 1
        while thumb in taken:
            k += 1
            thumb = out / THUMBS_DIR / f"{stem}-{k}.jpg"
        taken.add(thumb)
        paths[layer] = thumb
    return paths


def _collect_candidates(
    out: Path, records: Iterable[Mapping[str, Any]]
) -> tuple[list[_Candidate], list[str]]:
    """One candidate per shown output, in manifest order; a later record of it wins."""
    by_name: dict[str, Mapping[str, Any]] = {}
    notes: list[str] = []
    for record in records:
        outputs = record.get("outputs")
        if not isinstance(outputs, Mapping):
            continue
        rel = _shown_output(outputs)
        if rel is None:
            continue
        if not _inside(rel):
            notes.append(f"{rel}: left out (outside the output folder)")
            continue
        by_name[rel] = record
    taken: set[Path] = set()
    candidates = [
        _Candidate(rel, out / rel, _thumb_path(out, rel, taken), record)
        for rel, record in by_name.items()
    ]
    # Layer thumbnails are named after every figure's own, so those keep their usual names.
    for candidate in candidates:
        boxes = _map_boxes(candidate.record, candidate.name)
        paths = _layer_thumb_paths(out, candidate.name, boxes, taken)
        candidate.layer_thumbs.update({layer: (boxes[layer], paths[layer]) for layer in boxes})
    return candidates, notes


def _ensure_thumbnails(
    candidates: list[_Candidate], notes: list[str], progress: Progress | None
) -> dict[str, _Thumb]:
    """Thumbnails of all candidates that have a readable figure, keyed by candidate name."""
    thumbs: dict[str, _Thumb] = {}
    total = len(candidates)
    if progress is not None:
        progress(0, total)
    # Decoding and resizing release the GIL in Pillow, so threads use all cores.
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_ensure_thumbnail, candidates)
        for done, (candidate, result) in enumerate(zip(candidates, results, strict=True), 1):
            if isinstance(result, str):
                notes.append(f"{candidate.name}: left out ({result})")
            else:
                thumbs[candidate.name] = result
            if progress is not None:
                progress(done, total)
    return thumbs


def _kept(thumb: Path, figure_mtime: int) -> tuple[int, int] | None:
    """(width, height) of ``thumb`` if it is at least as new as its figure, else None."""
    try:
        if thumb.stat().st_mtime_ns >= figure_mtime:
            with Image.open(thumb) as kept:  # reads the header only
                return kept.width, kept.height
    except (OSError, ValueError):
        pass  # no thumbnail yet, or a broken one: make it
    return None


def _ensure_thumbnail(candidate: _Candidate) -> _Thumb | str:
    """The candidate's thumbnails, made if missing or older than its figure; else why not.

    The figure is decoded at most once, whichever of its thumbnails are out of date. A
    layer's thumbnail that cannot be made is left out: its card shows the whole figure.
    """
    try:
        figure_mtime = candidate.figure.stat().st_mtime_ns
    except OSError:
        return "figure missing"
    size = _kept(candidate.thumb, figure_mtime)
    layers: dict[str, tuple[Path, int, int]] = {}
    stale: list[tuple[str, Box, Path]] = []
    for layer, (box, thumb) in candidate.layer_thumbs.items():
        kept = _kept(thumb, figure_mtime)
        if kept is None:
            stale.append((layer, box, thumb))
        else:
            layers[layer] = (thumb, *kept)
    made = 0
    if size is None or stale:
        try:
            with Image.open(candidate.figure) as image:
                # Pillow decodes straight to RGB, so no BGR conversion is needed here.
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return f"cannot read figure: {exc}"
        for layer, box, thumb in stale:
            try:
                small = _crop_thumbnail(rgb, box)
            except ValueError:
                continue  # a box outside the figure (a hand-edited manifest)
            if _write_thumb(thumb, small) is None:
                layers[layer] = (thumb, small.shape[1], small.shape[0])
                made += 1
        if size is None:
            small = _fit(rgb)  # last, as it shrinks the decoded figure in place
            error = _write_thumb(candidate.thumb, small)
            if error is not None:
                return error
            size, made = (small.shape[1], small.shape[0]), made + 1
    in_order = {layer: layers[layer] for layer in candidate.layer_thumbs if layer in layers}
    return _Thumb(size[0], size[1], made, in_order)


def _write_thumb(path: Path, rgb: np.ndarray) -> str | None:
    """Write a JPEG thumbnail; why not, if it cannot be (other than a full or read-only disk)."""
    try:
        write_image(path, rgb, "jpg")
    except OutputError:
        raise  # disk full or read-only: every later write fails too
    except AttnvizError as exc:
        return str(exc)
    return None


def _fit(rgb: Image.Image, box: int = THUMB_BOX) -> np.ndarray:
    """``rgb`` shrunk in place to fit ``box`` x ``box`` (never enlarged), as RGB uint8."""
    # reducing_gap: a fast box pre-shrink, then Lanczos; as sharp as Lanczos alone.
    rgb.thumbnail((box, box), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(rgb, dtype=np.uint8)


def _crop_thumbnail(rgb: Image.Image, box: Box) -> np.ndarray:
    """The map panel at ``box`` of a figure, fitted like a whole-figure thumbnail."""
    x, y, width, height = box
    if min(width, height) < 1 or min(x, y) < 0 or x + width > rgb.width or y + height > rgb.height:
        raise ValueError(f"box {list(box)} is outside the {rgb.width}x{rgb.height} figure")
    return _fit(rgb.crop((x, y, x + width, y + height)))


def make_thumbnail(figure: Path, box: int = THUMB_BOX) -> np.ndarray:
    """The whole figure scaled to fit ``box`` x ``box``, as RGB uint8 (H, W, 3)."""
    with Image.open(figure) as image:
        # Pillow decodes straight to RGB, so no BGR conversion is needed at this boundary.
        return _fit(image.convert("RGB"), box)


# --- the page ---------------------------------------------------------------------------------


def _url(rel_path: str) -> str:
    """A relative URL for a path under the output folder, whatever bytes its name holds."""
    # fsencode gives back the original bytes of a non-UTF-8 name (surrogate escapes).
    return quote(os.fsencode(rel_path), safe="/")


def _number(value: Any) -> float | None:
    """A finite float for the page (8 significant digits keep near-equal maps apart)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return float(f"{number:.8g}") if math.isfinite(number) else None


def _top5(record: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for entry in record.get("top5") or []:
        if not isinstance(entry, Mapping):
            continue
        label = entry.get("label")
        text = str(label) if label is not None else f"class {entry.get('index', '?')}"
        rows.append([text, _number(entry.get("prob"))])
    return rows


def _stats(record: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """Per layer, the STAT_KEYS values (None where an old manifest lacks one)."""
    maps = record.get("maps")
    if not isinstance(maps, Mapping):
        return {}
    return {
        str(layer): [_number(stats.get(key)) for key in STAT_KEYS]
        for layer, stats in maps.items()
        if isinstance(stats, Mapping)
    }


def _item_data(candidate: _Candidate, thumb: _Thumb, out: Path) -> dict[str, Any]:
    record = candidate.record
    size = record.get("image_size")
    return {
        "n": candidate.name,
        "in": str(record.get("input", "")),
        "f": _url(candidate.name),
        "t": _url(candidate.thumb.relative_to(out).as_posix()),
        "w": thumb.width,
        "h": thumb.height,
        "model": str(record.get("model", "")),
        "size": size if isinstance(size, list) else None,
        "top": _top5(record),
        "m": _stats(record),
        # Per layer, [url, width, height] of the thumbnail of its map alone.
        "lt": {
            layer: [_url(path.relative_to(out).as_posix()), width, height]
            for layer, (path, width, height) in thumb.layers.items()
        },
    }


def _layers(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """All layer names, in the order they first appear (the network's order)."""
    seen: dict[str, None] = {}
    for item in items:
        seen.update(dict.fromkeys(item["m"]))
    return list(seen)


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element whatever strings it holds."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # '<' only occurs inside JSON strings, where \u003c means the same: no "</script>" or
    # "<!--" can appear. '>' and '&' likewise, for good measure.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _render_page(
    title: str,
    entries: list[tuple[_Candidate, _Thumb]],
    out: Path,
    failed: list[dict[str, Any]],
    notes: list[str],
) -> str:
    """The HTML of the gallery; every piece of data goes through the embedded JSON."""
    items = [_item_data(candidate, thumb, out) for candidate, thumb in entries]
    data = {
        "title": title,
        "stats": list(STAT_KEYS),
        "layers": _layers(items),
        "items": items,
        "failed": [[str(r.get("input", "")), str(r.get("error", ""))] for r in failed],
        "notes": notes,
    }
    return (
        _PAGE.replace("/*CSS*/", _CSS)
        .replace("/*JS*/", _JS)
        .replace("/*DATA*/", _script_json(data))
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src file: data: 'self';
  style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>attnviz gallery</title>
<link rel="icon" href="data:,">
<style>/*CSS*/</style>
</head>
<body>
<header>
  <h1>attnviz gallery <span id="title"></span></h1>
  <span id="count" aria-live="polite"></span>
  <div class="controls">
    <label>Class <select id="filter"></select></label>
    <label>Search <input id="search" type="search" placeholder="file or class" size="16"></label>
    <label>Sort by <select id="sort">
      <option value="name">file name</option>
      <option value="max">peak value</option>
      <option value="entropy">entropy</option>
      <option value="mass_top10">top-10% mass</option>
      <option value="prob">top-1 probability</option>
    </select></label>
    <select id="dir" aria-label="sort direction">
      <option value="asc">ascending</option>
      <option value="desc">descending</option>
    </select>
    <label id="layer-box" hidden title="the layer whose map the cards show and the sort uses">
      Layer <select id="layer"></select></label>
  </div>
</header>
<details id="problems" hidden><summary></summary><ul></ul></details>
<main id="grid"></main>
<p id="empty" hidden>No image matches this filter.</p>
<dialog id="viewer" aria-label="figure">
  <div class="vbox">
    <div class="vbar">
      <span class="vname"></span><span class="vpos"></span>
      <button type="button" id="prev" title="previous (Left arrow)">&#8249;</button>
      <button type="button" id="next" title="next (Right arrow)">&#8250;</button>
      <a id="vopen" target="_blank" rel="noopener">open figure</a>
      <button type="button" id="close" title="close (Esc)">&#215;</button>
    </div>
    <div class="vbody">
      <div class="vfig"><img id="vimg" alt=""></div>
      <aside>
        <h2>Top-5 classes</h2><ol class="top5"></ol>
        <h2>Attention maps</h2>
        <table class="layers"><thead><tr><th>layer</th>
          <th title="largest value of the map">peak</th>
          <th title="1 = spread evenly, 0 = all on one position">entropy</th>
          <th title="share of the map's mass in the top 10% of its area">top 10%</th>
          <th title="mean value of the map">mean</th></tr></thead><tbody></tbody></table>
        <p class="vmeta"></p>
      </aside>
    </div>
  </div>
</dialog>
<script type="application/json" id="data">/*DATA*/</script>
<script>/*JS*/</script>
</body>
</html>
"""

_CSS = """
:root { --card: 300px; --ar: 3 / 1; color-scheme: light;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: #1f2937; }
[hidden] { display: none !important; }
header { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: 8px 20px;
  align-items: center; padding: 10px 16px; background: #fff; border-bottom: 1px solid #d1d5db; }
h1 { font-size: 17px; margin: 0; font-weight: 600; }
#title { font-weight: 400; color: #6b7280; }
#count { color: #374151; font-variant-numeric: tabular-nums; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: center; margin-left: auto; }
.controls label { display: flex; gap: 6px; align-items: center; color: #4b5563; }
select, input, button { font: inherit; }
select, input { padding: 3px 6px; border: 1px solid #cbd5e1; border-radius: 4px; background: #fff; }
#problems { margin: 10px 16px 0; padding: 8px 12px; background: #fef2f2;
  border: 1px solid #fecaca; border-radius: 6px; color: #991b1b; }
#problems summary { cursor: pointer; font-weight: 600; }
#problems ul { margin: 6px 0 0; padding-left: 20px; max-height: 30vh; overflow: auto;
  overflow-wrap: anywhere; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(var(--card), 1fr));
  gap: 12px; padding: 12px 16px 24px; }
.item { content-visibility: auto; contain-intrinsic-size: auto 300px auto 180px;
  display: flex; flex-direction: column; background: #fff; border: 1px solid #e5e7eb;
  border-radius: 6px; overflow: hidden; color: inherit; text-decoration: none; }
.item:hover, .item:focus-visible { border-color: #2563eb; outline: none;
  box-shadow: 0 0 0 2px #bfdbfe; }
.item img { display: block; width: 100%; height: auto; aspect-ratio: var(--ar);
  object-fit: contain; background: #fafafa; }
.cap { display: grid; grid-template-columns: 1fr auto; gap: 0 8px; padding: 6px 8px; }
.name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-weight: 500; }
.stat { color: #1d4ed8; font-variant-numeric: tabular-nums; white-space: nowrap; }
.cls { grid-column: 1 / -1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
  color: #4b5563; }
.cls b { font-weight: 500; color: #111827; font-variant-numeric: tabular-nums; }
#empty { text-align: center; color: #6b7280; padding: 40px; }
#viewer { padding: 0; border: 0; border-radius: 8px; width: min(1500px, 96vw);
  max-height: 96vh; box-shadow: 0 10px 40px rgba(0, 0, 0, .35); }
#viewer::backdrop { background: rgba(17, 24, 39, .7); }
.vbox { display: flex; flex-direction: column; max-height: 96vh; }
.vbar { display: flex; gap: 10px; align-items: center; padding: 8px 12px;
  border-bottom: 1px solid #e5e7eb; }
.vname { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
  flex: 1; }
.vpos { color: #6b7280; font-variant-numeric: tabular-nums; }
.vbar button { border: 1px solid #d1d5db; background: #fff; border-radius: 4px;
  min-width: 32px; font-size: 18px; line-height: 1; padding: 3px 8px; cursor: pointer; }
.vbar a { color: #1d4ed8; }
.vbody { display: flex; gap: 16px; padding: 12px; overflow: auto; min-height: 0; }
.vfig { flex: 1; min-width: 0; display: flex; align-items: flex-start; justify-content: center; }
.vfig img { max-width: 100%; max-height: calc(96vh - 80px); object-fit: contain; }
aside { width: 320px; flex: none; }
aside h2 { font-size: 14px; margin: 0 0 6px; }
.top5 { margin: 0 0 16px; padding: 0; list-style: none; }
.top5 li { display: grid; grid-template-columns: 1fr auto; gap: 2px 8px; margin-bottom: 6px; }
.top5 .p { font-variant-numeric: tabular-nums; color: #374151; }
.top5 .bar { grid-column: 1 / -1; height: 5px; background: #e5e7eb; border-radius: 3px; }
.top5 .bar span { display: block; height: 100%; background: #2563eb; border-radius: 3px; }
.layers { border-collapse: collapse; width: 100%; font-size: 12.5px;
  font-variant-numeric: tabular-nums; }
.layers th { white-space: nowrap; }
.layers th, .layers td { padding: 3px 5px; border-bottom: 1px solid #e5e7eb; text-align: right; }
.layers th:first-child, .layers td:first-child { text-align: left; overflow-wrap: break-word; }
.layers tr.current td { background: #eff6ff; font-weight: 600; }
.vmeta { color: #6b7280; font-size: 12.5px; overflow-wrap: anywhere; }
@media (max-width: 800px) { .vbody { flex-direction: column; } aside { width: auto; } }
"""

_JS = r"""
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
    return (it.lt && Object.hasOwn(it.lt, layer) && it.lt[layer]) || [it.t, it.w, it.h];
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
"""
