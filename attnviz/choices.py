"""What a user chooses by flag (formats, panels, colormaps) and the defaults of those flags.

A leaf of plain names: the CLI checks a user's choices against these before numpy, OpenCV
or torch is imported, so a usage error comes back at once. The modules that act on a
choice (io.write, render.triptych, render.colormaps) import their lists from here.
"""

from __future__ import annotations

import difflib

from attnviz.errors import UsageError

FORMATS = ("png", "jpg", "webp")
# What a figure can show of each layer: the photo, the weight map, the weighted features over
# the photo, the trunk's Grad-CAM over the photo, the photo with the map's thresholded outline,
# and a channel gate's weights.
PANELS = ("original", "map", "weighted", "gradcam", "contours", "channels")
# OpenCV's colormaps (cv2.COLORMAP_<NAME>) by lower-case name; tests/test_render.py checks
# that this is every colormap the installed OpenCV has.
COLORMAP_NAMES = (
    "autumn",
    "bone",
    "cividis",
    "cool",
    "deepgreen",
    "hot",
    "hsv",
    "inferno",
    "jet",
    "magma",
    "ocean",
    "parula",
    "pink",
    "plasma",
    "rainbow",
    "spring",
    "summer",
    "turbo",
    "twilight",
    "twilight_shifted",
    "viridis",
    "winter",
)
# Decoding refuses larger images (a decompression bomb guard; --max-pixels): 16k x 10k, far
# above any camera photo a network would see, far below a bomb's claim.
DEFAULT_MAX_PIXELS = 160_000_000


def colormap_name(name: str) -> str:
    """The colormap ``name`` refers to (case-insensitive), as listed in COLORMAP_NAMES.

    Raises UsageError (a user's bad flag, not a bug) naming the valid choices and the
    closest match.
    """
    key = name.strip().lower()
    if key in COLORMAP_NAMES:
        return key
    close = difflib.get_close_matches(key, COLORMAP_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"unknown colormap {name!r}{hint}; choose one of: {', '.join(COLORMAP_NAMES)}")
