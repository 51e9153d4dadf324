"""Pure numpy rendering of attention figures: maps in, RGB uint8 images out (no torch here)."""

from attnviz.render.colormaps import COLORMAPS, apply_colormap, resolve_colormap
from attnviz.render.gallery import GalleryResult, write_gallery
from attnviz.render.panels import blend, normalize, upsample
from attnviz.render.triptych import LayerMaps, render_mosaic, render_triptych

__all__ = [
    "COLORMAPS",
    "GalleryResult",
    "LayerMaps",
    "apply_colormap",
    "blend",
    "normalize",
    "render_mosaic",
    "render_triptych",
    "resolve_colormap",
    "upsample",
    "write_gallery",
]
