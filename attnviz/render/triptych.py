"""The attnviz figure: per layer, image | attention weights | weighted features | colour keys.

Layout of one row (all image areas share one height; captions sit above them)::

    [original] g [weights M_s] g [|M (x) F| over image] g [key: weights] g [key: |F_out|]

Rows, one per layer, are stacked with the same white gutter ``g`` between them.

A panel takes the image's aspect ratio clamped to [1:4, 4:1], so a 1x5000 strip still gives a
readable figure; the image (and the maps over it) is fitted inside the panel whole, letterboxed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from attnviz.render.colormaps import apply_colormap, resolve_colormap
from attnviz.render.panels import (
    blend,
    caption,
    caption_height,
    caption_scale,
    colorbar,
    colorbar_width,
    normalize,
    text_strip,
    upsample,
)

GUTTER = 6
_WHITE = 255
# Grey, not white: white would merge with the gutters and read as "high" in hot/bone colour maps.
_LETTERBOX = 128
MAX_ASPECT = 4  # a panel is at most 4x wider than tall, or 4x taller than wide


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
    weighted_label: str = "weighted |F_out|"
    weighted_key: str = "|F_out|"


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a triptych; separated out so tests can check it without rendering."""

    panel_width: int
    panel_height: int
    caption_height: int
    colorbar_width: int
    gutter: int = GUTTER

    @property
    def row_height(self) -> int:
        return self.caption_height + self.panel_height

    @property
    def width(self) -> int:
        return 3 * self.panel_width + 2 * self.colorbar_width + 4 * self.gutter

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
        caption_height=caption_height(width),
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
        title, bar.shape[1], layout.caption_height, caption_scale(layout.panel_width)
    )
    return np.vstack([header, bar])


def _hgap(height: int, width: int = GUTTER) -> np.ndarray:
    return np.full((height, width, 3), _WHITE, dtype=np.uint8)


def _render_row(
    base: np.ndarray,
    original_hw: tuple[int, int],
    layer: LayerMaps,
    cmap: str,
    alpha: float,
    layout: Layout,
) -> np.ndarray:
    # Maps are drawn over the image content only; letterbox() then pads all three panels alike.
    size = (base.shape[0], base.shape[1])
    panel = (layout.panel_height, layout.panel_width)
    h, w = original_hw
    weights = _check_map(layer, "weights")
    weighted = _check_map(layer, "weighted")

    # Panel 2: absolute scale. Weights are sigmoid outputs, so [0, 1] is their meaning; a min-max
    # stretch would make a flat 0.5 map look as decisive as a 0-vs-1 one.
    w_lo, w_hi = float(weights.min()), float(weights.max())
    weights_rgb = apply_colormap(np.clip(upsample(weights, size), 0.0, 1.0), cmap)

    # Panel 3: relative scale. The features have no natural unit, so stretch to the map's range.
    unit, f_lo, f_hi = normalize(weighted)
    feature_rgb = blend(base, apply_colormap(upsample(unit, size), cmap), alpha)

    parts = [
        caption(letterbox(base, panel), f"original {w}x{h}"),
        # Layer name on its own line, so a long name is shortened without losing the range.
        caption(
            letterbox(weights_rgb, panel),
            f"{layer.name}\n{layer.weights_label} [{w_lo:.3g}, {w_hi:.3g}]",
        ),
        caption(
            letterbox(feature_rgb, panel),
            f"{layer.name}\n{layer.weighted_label} [{f_lo:.3g}, {f_hi:.3g}]",
        ),
        # Two keys because panels 2 and 3 use different scales: 0..1 vs the feature map's range.
        _key(layer.weights_key, colorbar(layout.panel_height, cmap, 0.0, 1.0), layout),
        _key(layer.weighted_key, colorbar(layout.panel_height, cmap, f_lo, f_hi), layout),
    ]
    row_h = layout.row_height
    pieces: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if i:
            pieces.append(_hgap(row_h))
        pieces.append(part)
    return np.hstack(pieces)


def render_triptych(
    image: np.ndarray,
    layers: Sequence[LayerMaps],
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    panel_height: int = 320,
) -> np.ndarray:
    """Render one row per layer (see module docstring); returns an RGB uint8 image.

    ``image`` is the original RGB uint8 (H, W, 3) picture; it is shown whole, never cropped, and
    letterboxed on grey when its aspect ratio is beyond 1:4..4:1 (see ``panel_size``).
    Deterministic: the same inputs give byte-identical output.
    """
    _check_image(image)
    if len(layers) == 0:
        raise ValueError("render_triptych needs at least one layer")
    resolve_colormap(cmap)  # fail on a bad name before doing any work
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    layout = compute_layout(image.shape, panel_height)
    base = fit_image(image, panel_height)
    original_hw = (image.shape[0], image.shape[1])
    rows = [_render_row(base, original_hw, layer, cmap, alpha, layout) for layer in layers]

    pieces: list[np.ndarray] = []
    for i, row in enumerate(rows):
        if i:
            pieces.append(np.full((layout.gutter, layout.width, 3), _WHITE, dtype=np.uint8))
        pieces.append(row)
    return np.vstack(pieces)
