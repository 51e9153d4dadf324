"""A run's figure of one photo as its options lay it out, and the statistics its record keeps.

Shared by ``attnviz run`` (outputs.py writes a photo's; plan.py names them), videos
(video.py) and compare: from a photo and
its maps (an ``ImageResult``) to the images written, knowing nothing of how they were
computed or where they go.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from attnviz.engine.options import RunOptions, drawn_panels, parse_norm
from attnviz.io.inputs import file_part
from attnviz.render.panels import colorbar
from attnviz.render.triptych import Range, Triptych, compose_triptych, draw_panels, split_panels

if TYPE_CHECKING:
    from attnviz.engine.runner import ImageResult


def map_stats(weights: np.ndarray, image_hw: tuple[int, int]) -> dict[str, object]:
    """Statistics of a native-resolution map, for sorting and spreadsheets.

    ``max`` is the peak value and ``peak_xy`` its place in image pixels; ``entropy`` is the
    Shannon entropy of the map read as a distribution over positions, divided by its largest
    possible value (1 = spread evenly, 0 = all on one position); ``mass_top10`` is the share
    of the map's total held by the 10 % of positions with the highest values.
    """
    h, w = weights.shape
    flat = np.asarray(weights, dtype=np.float64).ravel()
    y, x = np.unravel_index(int(np.argmax(flat)), weights.shape)
    mass = np.clip(flat, 0.0, None)
    total = float(mass.sum())
    if total > 0 and flat.size > 1:
        p = mass[mass > 0] / total
        entropy = max(0.0, float(-(p * np.log(p)).sum() / np.log(flat.size)))
        top = max(1, int(np.ceil(0.1 * flat.size)))
        mass_top10 = float(np.sort(mass)[-top:].sum() / total)
    else:  # an all-zero map, or a single position: spread nowhere, all mass in one place
        entropy, mass_top10 = 0.0, 1.0
    return {
        "shape": [h, w],
        "min": float(flat.min()),
        "max": float(flat.max()),
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "entropy": entropy,
        "mass_top10": mass_top10,
        "peak_xy": [float((x + 0.5) * image_hw[1] / w), float((y + 0.5) * image_hw[0] / h)],
    }


def norm_ranges(
    norm: str, names: Iterable[str], run: Mapping[str, Range] | None = None
) -> dict[str, Range]:
    """The colour range of each heat map named under ``--norm``: the fixed bounds for every
    one (parts' rows included), else the run's (``global``), else none (each map its own)."""
    _, bounds = parse_norm(norm)
    return dict.fromkeys(names, bounds) if bounds is not None else dict(run or {})


def heat_maps(result: ImageResult) -> dict[str, np.ndarray]:
    """The maps of a result whose colours follow ``--norm``, by the names ranges use."""
    maps = {layer.name: np.asarray(layer.weighted) for layer in result.layers}
    if result.gradcam is not None:
        maps["gradcam"] = np.asarray(result.gradcam)
    return maps


def render_figure(
    image: np.ndarray,
    result: ImageResult,
    opts: RunOptions,
    ranges: Mapping[str, Range] | None = None,
    original_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """The one figure of ``image`` as ``opts`` lay it out (layouts row and grid).

    ``ranges`` are the run's colour ranges by map name (``--norm global``); ``--norm fixed``
    and the default (each image's own) need none. ``original_hw``: the photo's own size
    when it was decoded smaller.
    """
    return compose_figure(image, result, opts, ranges, original_hw).image


def compose_figure(
    image: np.ndarray,
    result: ImageResult,
    opts: RunOptions,
    ranges: Mapping[str, Range] | None = None,
    original_hw: tuple[int, int] | None = None,
) -> Triptych:
    """``render_figure``'s figure with where each layer's map panel is in it."""
    ranges = norm_ranges(opts.norm, heat_maps(result), ranges)
    panels = drawn_panels(opts)
    # The grid squares each layer's own panels: with several layers the photo and Grad-CAM
    # have a line of their own.
    shared, own = split_panels(panels, len(result.layers))
    columns = math.ceil(math.sqrt(len(own or shared))) if opts.layout == "grid" else None
    # Rows in the network's order, as `attnviz layers`, the manifest and the API list them.
    return compose_triptych(
        image, result.layers, cmap=opts.cmap, alpha=opts.alpha, panel_height=opts.panel_height,
        panels=panels, columns=columns, ranges=ranges, gradcam=result.gradcam,
        original_hw=original_hw,
    )  # fmt: skip


def output_suffixes(opts: RunOptions, layers: Sequence[str]) -> dict[str, str]:
    """Each output of an input, by its manifest name, and the suffix its file gets.

    ``--layout separate`` writes one file per panel (and per colour key), named
    ``<stem>.<panel>.<format>``, with the layer inserted when there are several.
    """
    fmt = "." + opts.fmt
    suffixes: dict[str, str] = {}
    if opts.layout != "separate":
        suffixes["figure"] = fmt
    else:
        names = [n for n in layers if n != "gradcam"] or list(layers)
        for layer in names:
            prefix = f".{file_part(layer)}" if len(names) > 1 else ""
            for panel in drawn_panels(opts):
                tag = f"{layer}:{panel}" if len(names) > 1 else panel
                suffixes[tag] = f"{prefix}.{panel}{fmt}"
                if panel in ("map", "weighted", "gradcam", "channels"):  # panels with a key
                    suffixes[f"{tag}-key"] = f"{prefix}.{panel}-key{fmt}"
    if opts.save_raw:
        suffixes["raw"] = ".npz"
    return suffixes


def separate_panels(
    image: np.ndarray,
    result: ImageResult,
    opts: RunOptions,
    ranges: Mapping[str, Range],
    original_hw: tuple[int, int],
) -> dict[str, np.ndarray]:
    """``--layout separate``: each panel bare (no caption, no letterbox) and its colour key."""
    images: dict[str, np.ndarray] = {}
    several = len(result.layers) > 1
    for layer in result.layers:
        panels = draw_panels(
            image, layer, panels=drawn_panels(opts), cmap=opts.cmap, alpha=opts.alpha,
            panel_height=opts.panel_height, ranges=ranges, gradcam=result.gradcam,
            original_hw=original_hw, auto_channels=False,
        )  # fmt: skip
        for panel in panels:
            tag = f"{layer.name}:{panel.kind}" if several else panel.kind
            images[tag] = panel.image
            if panel.key is not None:
                _, lo, hi = panel.key
                images[f"{tag}-key"] = colorbar(opts.panel_height, opts.cmap, lo, hi)
    return images
