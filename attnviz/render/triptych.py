"""The attnviz figure: per layer, image | attention weights | weighted features | colour keys.

Layout of one row with the default panels (all image areas share one height; captions sit
above them)::

    [original] g [weights M_s] g [|M (x) F| over image] g [key: weights] g [key: |F_out|]

Rows, one per layer, are stacked with the same white gutter ``g`` between them. With several
layers, the panels that do not depend on the layer (the photo, Grad-CAM) are drawn once, on
a first line of their own, and each layer's row holds only its own maps. Other panel kinds
(see PANELS) take their place in the order asked for, followed by one key per colour scale;
the grid layout wraps a line's panels after a number of columns.

A panel takes the image's aspect ratio clamped to [1:4, 4:1], so a 1x5000 strip still gives a
readable figure; the image (and the maps over it) is fitted inside the panel whole, letterboxed.

``compose_triptych`` draws the figure and says where each layer's map panel landed in it (the
gallery crops one thumbnail per layer there); ``render_triptych`` is its figure alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from attnviz.choices import PANELS
from attnviz.render.colormaps import apply_colormap, resolve_colormap
from attnviz.render.panels import (
    blend,
    caption,
    caption_height,
    caption_scale,
    colorbar,
    colorbar_width,
    common_caption_scale,
    normalize,
    text_strip,
    upsample,
)

GUTTER = 6
_WHITE = 255
# Grey, not white: white would merge with the gutters and read as "high" in hot/bone colour maps.
_LETTERBOX = 128
MAX_ASPECT = 4  # a panel is at most 4x wider than tall, or 4x taller than wide
# The panels a figure shows unless --panels says otherwise (choices.PANELS lists them all).
DEFAULT_PANELS = ("original", "map", "weighted")
# Panels that are the same whatever the layer: a figure of several layers draws them once,
# on a line of their own above the layers' lines.
SHARED_PANELS = ("original", "gradcam")
# Raised whenever figures are drawn differently, so that a rerun redraws older ones
# (2: the photo and Grad-CAM once above several layers; records carry map_boxes).
FIGURE_VERSION = 2
Range = tuple[float, float]


@dataclass(frozen=True)
class LayerMaps:
    """Maps captured at one attention layer, at the layer's native (h, w) resolution.

    ``weights`` are the spatial attention weights M_s (sigmoid outputs, in [0, 1]); ``weighted`` is
    a non-negative summary of the re-weighted features, e.g. mean |M (x) F| over channels.
    The labels name them in captions and keys (other maps, e.g. Grad-CAM, bring their own).
    """

    name: str
    weights: np.ndarray
    weighted: np.ndarray
    weights_label: str = "weights"
    weights_key: str = "weights"
    weighted_label: str = "weighted features"
    weighted_key: str = "|F_out|"
    # A channel gate's weights (C,) in [0, 1] that ran with this map (CBAM's), or None.
    channels: np.ndarray | None = None
    # The point the map was read from, (x, y) fractions of its width and height, or None.
    marker: tuple[float, float] | None = None
    # What multiplies the features, in terms of M, when it is not M itself ("0.5 + 0.5 M").
    applied: str | None = None
    # The captions' first line when the name is not what a reader needs (Grad-CAM's).
    title: str | None = None

    @property
    def heading(self) -> str:
        return self.title or self.name


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a triptych; separated out so tests can check it without rendering."""

    panel_width: int
    panel_height: int
    caption_height: int
    colorbar_width: int
    gutter: int = GUTTER
    panels: int = 3  # panels in a row
    keys: int = 2  # colour keys after them

    @property
    def row_height(self) -> int:
        return self.caption_height + self.panel_height

    @property
    def width(self) -> int:
        parts = self.panels + self.keys
        return (
            self.panels * self.panel_width
            + self.keys * self.colorbar_width
            + (parts - 1) * self.gutter
        )

    def height(self, rows: int) -> int:
        return rows * self.row_height + (rows - 1) * self.gutter

    def panel_origin(self, row: int, col: int) -> tuple[int, int]:
        """(y, x) of the top-left pixel of panel ``col``'s image area (below its caption)."""
        return (
            row * (self.row_height + self.gutter) + self.caption_height,
            col * (self.panel_width + self.gutter),
        )


def _natural_width(image_shape: tuple[int, ...], height: int) -> int:
    """Width of the image scaled to ``height`` with its aspect ratio kept (at least 1)."""
    h, w = image_shape[:2]
    return max(1, round(w * height / h))


def panel_size(image_shape: tuple[int, ...], panel_height: int) -> tuple[int, int]:
    """(height, width) of an image's panel: its aspect clamped to 1:4..4:1."""
    narrowest = max(1, round(panel_height / MAX_ASPECT))
    widest = MAX_ASPECT * panel_height
    width = min(max(_natural_width(image_shape, panel_height), narrowest), widest)
    return panel_height, width


def content_size(image_shape: tuple[int, ...], panel_height: int) -> tuple[int, int]:
    """(height, width) of the image inside its panel: as large as fits, aspect kept, never cropped.

    Equals ``panel_size`` unless the aspect ratio was clamped.
    """
    h, w = image_shape[:2]
    _, panel_width = panel_size(image_shape, panel_height)
    width = _natural_width(image_shape, panel_height)
    if width <= panel_width:  # fits at full height (a too-tall image is pillarboxed)
        return panel_height, width
    # Too wide: the panel's width is the limit, so the height shrinks instead.
    return max(1, round(h * panel_width / w)), panel_width


def compute_layout(image_shape: tuple[int, ...], panel_height: int) -> Layout:
    """Geometry of the triptych for an image of ``image_shape`` at ``panel_height``."""
    if panel_height < 1:
        raise ValueError(f"panel_height must be positive, got {panel_height}")
    _, width = panel_size(image_shape, panel_height)
    return Layout(
        panel_width=width,
        panel_height=panel_height,
        caption_height=caption_height(width, panel_height),
        colorbar_width=colorbar_width(panel_height),
    )


def fit_image(image: np.ndarray, panel_height: int) -> np.ndarray:
    """Resize ``image`` to its ``content_size`` in a panel ``panel_height`` tall (aspect kept)."""
    height, width = content_size(image.shape, panel_height)
    if (height, width) == image.shape[:2]:
        return image.copy()
    # INTER_AREA averages when shrinking (no aliasing); it blurs when enlarging, so use linear.
    shrinking = height < image.shape[0] or width < image.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def letterbox(content: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``content`` centred on a grey canvas of size = (height, width); as is if it fills it."""
    height, width = size
    h, w = content.shape[:2]
    if (h, w) == (height, width):
        return content
    canvas = np.full((height, width, 3), _LETTERBOX, dtype=np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = content
    return canvas


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}; "
            "convert grayscale/RGBA before rendering"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: {image.shape}")


def _check_map(layer: LayerMaps, field: str) -> np.ndarray:
    arr = np.asarray(getattr(layer, field), dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"layer {layer.name!r}: {field} must be a non-empty 2-D map, got shape {arr.shape}"
        )
    return arr


def _key(title: str, bar: np.ndarray, layout: Layout) -> np.ndarray:
    """A colour bar with a title in a strip as tall as the panel captions, so rows line up."""
    header = text_strip(
        title,
        bar.shape[1],
        layout.caption_height,
        caption_scale(layout.panel_width, layout.panel_height),
    )
    return np.vstack([header, bar])


def scale_to_range(values: np.ndarray, fixed: Range | None) -> tuple[np.ndarray, float, float]:
    """``values`` mapped to [0, 1]: by their own min-max, or by a ``fixed`` (lo, hi), clipped."""
    if fixed is None:
        return normalize(values)
    lo, hi = fixed
    if not hi > lo:
        return np.zeros_like(values, dtype=np.float32), lo, hi
    unit = np.clip((np.asarray(values, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return unit.astype(np.float32), lo, hi


@dataclass(frozen=True)
class Panel:
    """One drawn panel: its image (content size, not letterboxed), caption and colour key."""

    kind: str
    image: np.ndarray
    caption: str
    key: tuple[str, float, float] | None = None  # (title, lo, hi) of its colour scale


def _outline(base: np.ndarray, weights_px: np.ndarray, level: float) -> np.ndarray:
    """``base`` with the outline of the region where the map is at least ``level``."""
    mask = (weights_px >= level).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    out = base.copy()
    thickness = max(1, round(max(base.shape[:2]) / 160))
    # Yellow on a dark edge: visible on bright and dark photos alike.
    cv2.drawContours(out, contours, -1, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.drawContours(out, contours, -1, (255, 230, 0), thickness, cv2.LINE_AA)
    return out


def _mark(image: np.ndarray, marker: tuple[float, float] | None) -> np.ndarray:
    """``image`` with a ring and cross at ``marker`` (fractions of its width and height)."""
    if marker is None:
        return image
    h, w = image.shape[:2]
    centre = (round(marker[0] * w - 0.5), round(marker[1] * h - 0.5))
    radius = max(5, round(min(h, w) / 18))
    out = image.copy()
    # White on a black edge, like the contours: visible on any colour map.
    for colour, extra in (((0, 0, 0), 2), ((255, 255, 255), 0)):
        thickness = max(1, radius // 4) + extra
        cv2.circle(out, centre, radius, colour, thickness, cv2.LINE_AA)
        cv2.drawMarker(out, centre, colour, cv2.MARKER_CROSS, radius, thickness, cv2.LINE_AA)
    return out


def channel_profile(weights: np.ndarray, size: tuple[int, int], cmap: str) -> np.ndarray:
    """A channel gate's weights at a glance, RGB (height, width): on top, a strip of the
    channels in their own order coloured by weight; below, the same weights sorted high to
    low as a filled curve on the [0, 1] scale (how many channels the gate keeps, how hard).
    """
    height, width = size
    values = np.clip(np.asarray(weights, dtype=np.float32).ravel(), 0.0, 1.0)
    if values.size == 0:
        raise ValueError("a channel panel needs at least one channel weight")
    strip_h = max(2, height // 6)
    # Nearest channel per pixel column: every channel shows when there are fewer than pixels.
    columns = np.minimum((np.arange(width) * values.size) // width, values.size - 1)
    strip = apply_colormap(np.tile(values[columns], (strip_h, 1)), cmap)
    plot_h = max(1, height - strip_h - GUTTER)
    ranked = np.sort(values)[::-1][columns]
    rows = np.arange(plot_h, dtype=np.float32)[:, None]
    filled = rows >= (1.0 - ranked[None, :]) * plot_h  # under the curve, counted from the top
    plot = np.full((plot_h, width, 3), 235, dtype=np.uint8)
    colours = apply_colormap(np.tile(ranked, (plot_h, 1)), cmap)
    plot[filled] = colours[filled]
    for level in (0.25, 0.5, 0.75):  # grid lines at quarter steps of the weight
        plot[min(plot_h - 1, round((1.0 - level) * plot_h)), :] = 160
    gap = np.full((height - strip_h - plot_h, width, 3), _WHITE, dtype=np.uint8)
    return np.vstack([strip, gap, plot])


def draw_panels(
    image: np.ndarray,
    layer: LayerMaps,
    *,
    panels: Sequence[str] = DEFAULT_PANELS,
    cmap: str = "jet",
    alpha: float = 0.5,
    panel_height: int = 320,
    ranges: Mapping[str, Range] | None = None,
    gradcam: np.ndarray | None = None,
    base: np.ndarray | None = None,
    original_hw: tuple[int, int] | None = None,
    auto_channels: bool = True,
) -> list[Panel]:
    """The panels of one layer, in the order asked for (see PANELS).

    Panel ``map`` is on the weights' absolute [0, 1] scale; ``weighted`` and ``gradcam`` use
    ``ranges[name]`` when given (name: the layer's, or "gradcam"), else their own min-max.
    ``original_hw`` is the photo's own size, for the caption, when ``image`` was decoded
    smaller. A layer with channel weights gets a ``channels`` panel after its map unless
    ``auto_channels`` is off; a layer without them draws no ``channels`` panel.
    """
    _check_image(image)
    unknown = [k for k in panels if k not in PANELS]
    if unknown or not panels:
        raise ValueError(f"panels must be some of {', '.join(PANELS)}, got {list(panels)}")
    if "gradcam" in panels and gradcam is None:
        raise ValueError("a gradcam panel needs the Grad-CAM map")
    base = fit_image(image, panel_height) if base is None else base
    size = (base.shape[0], base.shape[1])
    ranges = ranges or {}
    h, w = original_hw or image.shape[:2]
    weights = _check_map(layer, "weights")
    kinds = list(panels)
    if auto_channels and layer.channels is not None and "map" in kinds and "channels" not in kinds:
        kinds.insert(kinds.index("map") + 1, "channels")
    out: list[Panel] = []
    for kind in kinds:
        if kind == "original":
            out.append(Panel(kind, base, f"original {w}x{h}"))
        elif kind == "map":
            # Absolute scale: weights are sigmoid outputs, so [0, 1] is their meaning; a min-max
            # stretch would make a flat 0.5 map look as decisive as a 0-vs-1 one.
            lo, hi = float(weights.min()), float(weights.max())
            rgb = apply_colormap(np.clip(upsample(weights, size), 0.0, 1.0), cmap)
            # Two decimals: the scale is [0, 1], and 3.84e-06 says no more than 0.00.
            label = layer.weights_label + (" M" if layer.applied is not None else "")
            text = f"{layer.heading}\n{label} [{lo:.2f}, {hi:.2f}]"
            if layer.marker is not None:
                text += " at the ring"
            if layer.applied is not None:
                text += f", applied as {layer.applied}"
            out.append(Panel(kind, _mark(rgb, layer.marker), text, (layer.weights_key, 0.0, 1.0)))
        elif kind == "channels":
            if layer.channels is None:
                continue
            values = np.asarray(layer.channels, dtype=np.float32).ravel()
            kept = float((values >= 0.5).mean())
            rgb = channel_profile(values, size, cmap)
            text = (f"{values.size} channel weights: order, sorted\n"
                    f"mean {values.mean():.2f}, {kept:.0%} >= 0.5")  # fmt: skip
            out.append(Panel(kind, rgb, text, (layer.weights_key, 0.0, 1.0)))
        elif kind == "weighted":
            # Relative scale: features have no natural unit, so stretch them (or use the run's).
            unit, lo, hi = scale_to_range(_check_map(layer, "weighted"), ranges.get(layer.name))
            rgb = blend(base, apply_colormap(upsample(unit, size), cmap), alpha)
            text = f"{layer.heading}\n{layer.weighted_label} [{lo:.3g}, {hi:.3g}]"
            out.append(Panel(kind, _mark(rgb, layer.marker), text, (layer.weighted_key, lo, hi)))
        elif kind == "gradcam":
            assert gradcam is not None
            unit, lo, hi = scale_to_range(np.asarray(gradcam, np.float32), ranges.get("gradcam"))
            rgb = blend(base, apply_colormap(upsample(unit, size), cmap), alpha)
            out.append(Panel(kind, rgb, f"Grad-CAM of the trunk\n[{lo:.3g}, {hi:.3g}]",
                             ("Grad-CAM", lo, hi)))  # fmt: skip
        else:  # contours
            level = (float(weights.min()) + float(weights.max())) / 2.0
            rgb = _outline(base, upsample(weights, size), level)
            out.append(Panel(kind, rgb, f"{layer.heading}\n{layer.weights_label} >= {level:.3g}"))
    return out


Box = tuple[int, int, int, int]  # (x, y, width, height) in a figure's pixels


@dataclass(frozen=True)
class Triptych:
    """A rendered figure and where each layer's map landed in it.

    ``map_boxes``: per layer name, the box of its ``map`` panel's image area (below the
    caption; the whole letterboxed panel), for those layers whose figure has a map panel.
    """

    image: np.ndarray
    map_boxes: dict[str, Box]


def _assemble(lines: Sequence[Sequence[np.ndarray]], gutter: int) -> tuple[np.ndarray, list[Box]]:
    """Each line's parts side by side, lines one under another, white gutters between and
    white on the right of narrower lines; returns the figure and every part's box, in order.

    Placing and drawing in one pass keeps the boxes true to the pixels whatever the layout.
    """
    boxes: list[Box] = []
    y = 0
    for line in lines:
        x = 0
        for part in line:
            boxes.append((x, y, part.shape[1], part.shape[0]))
            x += part.shape[1] + gutter
        y += max(part.shape[0] for part in line) + gutter
    width = max(bx + bw for bx, _, bw, _ in boxes)
    canvas = np.full((y - gutter, width, 3), _WHITE, dtype=np.uint8)
    for (bx, by, bw, bh), part in zip(boxes, (p for line in lines for p in line), strict=True):
        canvas[by : by + bh, bx : bx + bw] = part
    return canvas, boxes


def split_panels(panels: Sequence[str], layers: int) -> tuple[list[str], list[str]]:
    """(shared, own): the panels drawn once above the layers' rows, and each row's own.

    With one layer nothing is shared: its row holds every panel, in the order asked for."""
    shared = [k for k in panels if k in SHARED_PANELS] if layers > 1 else []
    return shared, [k for k in panels if k not in shared]


def _key_bars(drawn: Sequence[Panel], layout: Layout, cmap: str) -> list[np.ndarray]:
    """One colour key per scale the panels use, in their order."""
    keys = dict.fromkeys(p.key for p in drawn if p.key is not None)
    return [_key(t, colorbar(layout.panel_height, cmap, lo, hi), layout) for t, lo, hi in keys]


def render_triptych(
    image: np.ndarray,
    layers: Sequence[LayerMaps],
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    panel_height: int = 320,
    panels: Sequence[str] = DEFAULT_PANELS,
    columns: int | None = None,
    ranges: Mapping[str, Range] | None = None,
    gradcam: np.ndarray | None = None,
    original_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Render the panels of each layer (see module docstring); returns an RGB uint8 image.

    ``image`` is the original RGB uint8 (H, W, 3) picture; it is shown whole, never cropped, and
    letterboxed on grey when its aspect ratio is beyond 1:4..4:1 (see ``panel_size``).
    ``columns`` wraps each layer's panels after that many (the grid layout); the colour keys
    follow the last panel. Deterministic: the same inputs give byte-identical output.
    """
    return compose_triptych(
        image, layers, cmap=cmap, alpha=alpha, panel_height=panel_height, panels=panels,
        columns=columns, ranges=ranges, gradcam=gradcam, original_hw=original_hw,
    ).image  # fmt: skip


def compose_triptych(
    image: np.ndarray,
    layers: Sequence[LayerMaps],
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    panel_height: int = 320,
    panels: Sequence[str] = DEFAULT_PANELS,
    columns: int | None = None,
    ranges: Mapping[str, Range] | None = None,
    gradcam: np.ndarray | None = None,
    original_hw: tuple[int, int] | None = None,
) -> Triptych:
    """``render_triptych``'s figure (same arguments) with the box of each layer's map panel."""
    _check_image(image)
    if len(layers) == 0:
        raise ValueError("render_triptych needs at least one layer")
    resolve_colormap(cmap)  # fail on a bad name before doing any work
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    layout = compute_layout(image.shape, panel_height)
    base = fit_image(image, panel_height)
    box = (layout.panel_height, layout.panel_width)
    shared, own = split_panels(panels, len(layers))
    rows = [(layers[0], shared)] if shared else []
    rows += [(layer, own) for layer in layers] if own else []
    lines: list[list[np.ndarray]] = []
    maps: dict[int, str] = {}  # index of a map part, counted over all lines -> its layer
    for layer, kinds in rows:
        drawn = draw_panels(
            image, layer, panels=kinds, cmap=cmap, alpha=alpha, panel_height=panel_height,
            ranges=ranges, gradcam=gradcam, base=base, original_hw=original_hw,
        )  # fmt: skip
        if not drawn:  # e.g. --panels original,channels: a layer without channel weights
            continue
        # Maps are drawn over the image content only; letterbox() then pads all panels alike.
        parts = [caption(letterbox(p.image, box), p.caption) for p in drawn]
        placed = sum(map(len, lines))  # parts already placed, as _assemble counts them
        maps.update({placed + i: layer.name for i, p in enumerate(drawn) if p.kind == "map"})
        per_line = columns or len(parts)  # a row may gain a channels panel by itself
        chunks = [parts[i : i + per_line] for i in range(0, len(parts), per_line)]
        chunks[-1] = chunks[-1] + _key_bars(drawn, layout, cmap)
        lines += chunks
    if not lines:
        raise ValueError(f"nothing to draw: no layer has the panels {', '.join(panels)}")
    figure, boxes = _assemble(lines, layout.gutter)
    map_boxes: dict[str, Box] = {}
    for index, name in maps.items():
        x, y, width, height = boxes[index]
        # The image area is the part less its caption strip on top.
        map_boxes[name] = (x, y + height - layout.panel_height, width, layout.panel_height)
    return Triptych(figure, map_boxes)


def render_mosaic(
    image: np.ndarray,
    layers: Sequence[LayerMaps],
    *,
    cmap: str = "jet",
    panel_height: int = 320,
    columns: int | None = None,
    original_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """The photo, then each layer's weight map, as tiles of a grid ``columns`` wide (by
    default the squarest, ⌈√tiles⌉), with one colour key per scale after the first line.

    The compact way to set many maps side by side (``attnviz compare``'s default): the photo
    once, every map on its absolute [0, 1] scale, every caption in one text size.
    """
    _check_image(image)
    if len(layers) == 0:
        raise ValueError("render_mosaic needs at least one layer")
    resolve_colormap(cmap)
    layout = compute_layout(image.shape, panel_height)
    base = fit_image(image, panel_height)
    box = (layout.panel_height, layout.panel_width)
    common: dict[str, Any] = {
        "cmap": cmap,
        "panel_height": panel_height,
        "base": base,
        "auto_channels": False,
    }
    drawn = draw_panels(image, layers[0], panels=("original",), original_hw=original_hw, **common)
    for layer in layers:
        drawn += draw_panels(image, layer, panels=("map",), **common)
    scale = common_caption_scale([p.caption for p in drawn], layout.panel_width, panel_height)
    tiles = [caption(letterbox(p.image, box), p.caption, scale) for p in drawn]
    per_line = columns or math.ceil(math.sqrt(len(tiles)))
    lines = [tiles[i : i + per_line] for i in range(0, len(tiles), per_line)]
    lines[0] = lines[0] + _key_bars(drawn, layout, cmap)
    return _assemble(lines, layout.gutter)[0]
