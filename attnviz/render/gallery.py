"""The gallery of an output folder: one index.html to browse, filter and sort its figures.

The page is self-contained (inline CSS and JS, no network) so it works from ``file://``, on
a laptop that copied the folder, and in a sandbox. Its data is the manifest, embedded as
JSON; thumbnails live under ``out/.thumbs/`` and are re-made only when their figure changed.
A figure of several layers whose record gives ``map_boxes`` also gets one thumbnail per
layer, cropped to that layer's map panel: the cards show the layer chosen in the page's menu.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from attnviz.errors import AttnvizError, OutputError
from attnviz.io.files import atomic_write_bytes
from attnviz.io.inputs import file_part
from attnviz.io.manifest import MANIFEST_NAME, read_manifest
from attnviz.io.write import write_image
from attnviz.render.triptych import Box

# The figures are attnviz's own, however large --panel-size made them: Pillow's guard
# against decompression bombs has nothing to guard here (io/decode.py turns it off too).
Image.MAX_IMAGE_PIXELS = None

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
        stem = f"{rel}@{file_part(layer)}"
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
        _asset("page.html")
        .replace("/*CSS*/", _asset("gallery.css"))
        .replace("/*JS*/", _asset("gallery.js"))
        .replace("/*DATA*/", _script_json(data))
    )


@functools.cache
def _asset(name: str) -> str:
    """The page's HTML, CSS or JavaScript, kept as files that editors and linters can read."""
    return (resources.files("attnviz.render") / "gallery_assets" / name).read_text("utf-8")
