"""OpenCV colormaps by name, returning RGB.

OpenCV's ``applyColorMap`` yields BGR; everything else in attnviz is RGB, so
:func:`apply_colormap` converts its colours here and no renderer needs to think about channel
order (images and video frames convert on their way through OpenCV's encoders, in io/).
"""

from __future__ import annotations

import cv2
import numpy as np

from attnviz.choices import COLORMAP_NAMES, colormap_name

# Every name in choices.COLORMAP_NAMES is an OpenCV colormap (tests/test_render.py).
COLORMAPS: dict[str, int] = {
    name: int(getattr(cv2, f"COLORMAP_{name.upper()}")) for name in COLORMAP_NAMES
}


def resolve_colormap(name: str) -> int:
    """Return the OpenCV colormap id for ``name`` (case-insensitive; see choices.colormap_name)."""
    return COLORMAPS[colormap_name(name)]


def apply_colormap(values: np.ndarray, name: str) -> np.ndarray:
    """Colour a 2-D map of values in [0, 1] (clipped; NaN counts as 0); returns RGB uint8 (h, w, 3).

    cv2.applyColorMap returns BGR; the colours leave here as RGB (OpenCV's video I/O in
    io/video.py converts frames its own way).
    """
    cmap = resolve_colormap(name)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"apply_colormap expects a 2-D map, got shape {values.shape}")
    unit = np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    levels = np.rint(unit * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, cmap)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
