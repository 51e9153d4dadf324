"""Building blocks for figure panels: scaling maps, blending, captions and colour bars.

All functions are pure: numpy arrays in, new numpy arrays out. Images are RGB uint8 (H, W, 3).
Text uses cv2.putText with FONT_HERSHEY_SIMPLEX; keep it ASCII, since OpenCV 4's Hershey fonts
draw other characters as '?' (hence "..." rather than a Unicode ellipsis).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from attnviz.render.colormaps import apply_colormap

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (30, 30, 30)
_WHITE = 255
_ELLIPSIS = "..."
_CAPTION_LINES = 2  # room reserved in every caption strip, so long captions wrap, not shrink
_MIN_SCALE = 0.33  # below this Hershey text stops being readable


def normalize(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max scale to [0, 1] float32; returns (scaled, lo, hi) with the original range.

    A constant map becomes all zeros rather than NaN. Non-finite input is rejected, since it would
    silently poison the range shown in captions.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("cannot normalise an empty map")
    if not np.all(np.isfinite(arr)):
        raise ValueError("map contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return scaled.astype(np.float32), lo, hi


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D map to size = (height, width); float32 out.

    cv2's INTER_LINEAR samples at pixel centres (like torch's align_corners=False), so a coarse
    attention cell lands over the image region it was computed from.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {size}")
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"upsample expects a 2-D map, got shape {arr.shape}")
    # cv2 takes (width, height).
    return cv2.resize(arr, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def blend(image: np.ndarray, heat_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """Alpha-blend ``heat_rgb`` over ``image`` (both RGB uint8, same shape); alpha = heat weight."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if image.shape != heat_rgb.shape:
        raise ValueError(f"shape mismatch: image {image.shape} vs heatmap {heat_rgb.shape}")
    mixed = image.astype(np.float32) * (1.0 - alpha) + heat_rgb.astype(np.float32) * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


# --- text -------------------------------------------------------------------------------------


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def _line_height(scale: float) -> tuple[int, int]:
    """(cap height, descent) of one line of text at ``scale``."""
    (_, height), baseline = cv2.getTextSize("Ag|", _FONT, scale, 1)
    return height, baseline


def caption_scale(width: int, panel_height: int = 320) -> float:
    """Font scale of captions on a panel ``width`` x ``panel_height`` px.

    It grows with the panel's width so text stays proportionate, and is capped by its height
    so wide panels don't shout; large panels (``--panel-size``) raise the cap, so captions
    stay legible when the figure is shrunk onto a page.
    """
    return float(np.clip(width / 600.0, 0.4, max(0.8, panel_height / 400.0)))


def caption_height(width: int, panel_height: int = 320) -> int:
    """Height of the caption strip for a panel (independent of the text).

    Depending on the panel's size alone keeps equal panels aligned in a row.
    """
    height, descent = _line_height(caption_scale(width, panel_height))
    pad = max(3, height // 2)
    return _CAPTION_LINES * (height + descent) + 2 * pad


def _shorten(text: str, max_width: int, scale: float) -> str:
    """``text`` if it fits, else its head and tail joined by "..." ("" if not even that fits).

    Cutting the middle keeps both ends of dotted module paths, whose last parts say the most.
    """
    if _text_width(text, scale) <= max_width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        tail = text[len(text) - keep // 2 :] if keep // 2 else ""
        candidate = text[: (keep + 1) // 2] + _ELLIPSIS + tail
        if _text_width(candidate, scale) <= max_width:
            return candidate
    return _ELLIPSIS if _text_width(_ELLIPSIS, scale) <= max_width else ""


def _wrap(text: str, max_width: int, scale: float, max_lines: int) -> list[str] | None:
    """Greedy word wrap honouring explicit newlines.

    Returns None if it needs more than ``max_lines`` lines or a single word is too wide.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if _text_width(candidate, scale) <= max_width:
                current = candidate
                continue
            if _text_width(word, scale) > max_width:
                return None
            lines.append(current)
            current = word
        if current:
            lines.append(current)
    return lines if len(lines) <= max_lines else None


def _fit_lines(text: str, max_width: int, scale: float, max_lines: int) -> tuple[list[str], float]:
    """Lay out ``text`` in at most ``max_lines`` lines: wrap first, then shrink, then shorten."""
    while True:
        lines = _wrap(text, max_width, scale, max_lines)
        if lines is not None:
            return lines, scale
        if scale <= _MIN_SCALE:
            break
        scale = max(_MIN_SCALE, scale * 0.9)
    # Still too long at the smallest legible size: one line per explicit line, cut in the middle.
    paragraphs = [" ".join(p.split()) for p in text.split("\n")]
    paragraphs = paragraphs[: max_lines - 1] + [" ".join(paragraphs[max_lines - 1 :])]
    return [_shorten(p, max_width, scale) for p in paragraphs if p], scale


# White margin left and right of a caption's text, in pixels.
_TEXT_PAD = 2


def text_strip(text: str, width: int, height: int, scale: float, max_lines: int = 1) -> np.ndarray:
    """A white (height, width) RGB strip with ``text`` centred, fitted to the strip's width."""
    strip = np.full((height, width, 3), _WHITE, dtype=np.uint8)
    pad = _TEXT_PAD
    lines, scale = _fit_lines(text, max(1, width - 2 * pad), scale, max_lines)
    if not lines:
        return strip
    cap, descent = _line_height(scale)
    step = cap + descent
    top = (height - step * len(lines)) // 2
    for i, line in enumerate(lines):
        x = max(pad, (width - _text_width(line, scale)) // 2)
        y = top + i * step + cap  # putText's y is the baseline
        cv2.putText(strip, line, (x, y), _FONT, scale, _INK, 1, cv2.LINE_AA)
    return strip


def caption(panel: np.ndarray, text: str, scale: float | None = None) -> np.ndarray:
    r"""Return ``panel`` with a white caption strip of dark text added above it.

    Long text wraps onto a second line (a "\n" in ``text`` forces the break), then shrinks,
    then is shortened with "..." in the middle. ``scale`` caps the text size (see
    ``common_caption_scale``); by default it is the panel's own.
    """
    height, width = panel.shape[:2]
    strip = text_strip(
        text,
        width,
        caption_height(width, height),
        caption_scale(width, height) if scale is None else scale,
        max_lines=_CAPTION_LINES,
    )
    return np.vstack([strip, panel])


def common_caption_scale(texts: Sequence[str], width: int, height: int) -> float:
    """The text size at which every caption of ``texts`` fits a panel (width, height), so
    that panels set side by side carry captions of one size."""
    scale = caption_scale(width, height)
    fitted = (_fit_lines(t, max(1, width - 2 * _TEXT_PAD), scale, _CAPTION_LINES) for t in texts)
    return min(fitted_scale for _, fitted_scale in fitted)


# --- colour bar -------------------------------------------------------------------------------


def colorbar_width(height: int) -> int:
    """Width of a colour bar ``height`` px tall: room for tick labels, never narrower than 60."""
    return max(60, round(0.3 * height))


def _format_tick(value: float) -> str:
    return f"{value:.3g}"


def colorbar(height: int, name: str, lo: float, hi: float) -> np.ndarray:
    """A vertical colour key (RGB uint8, ``height`` x colorbar_width(height)).

    The gradient runs from colour 1 (top, labelled ``hi``) to colour 0 (bottom, labelled ``lo``),
    with ``lo``, mid and ``hi`` ticks on white to its right. Colours come from apply_colormap, so
    the key matches the panels exactly. Labels shrink to fit; extreme widths may clip them.
    """
    if height < 1:
        raise ValueError(f"colorbar height must be positive, got {height}")
    width = colorbar_width(height)
    out = np.full((height, width, 3), _WHITE, dtype=np.uint8)

    labels = [_format_tick(v) for v in (hi, (lo + hi) / 2.0, lo)]
    bar_x0 = 4
    bar_w = max(10, width // 4)
    tick_len = 4
    text_x = bar_x0 + bar_w + tick_len + 3
    # Tall bars (large --panel-size) get proportionally larger labels.
    scale = float(np.clip(height / 700.0, 0.35, max(0.6, height / 700.0)))
    widest = max(labels, key=lambda s: _text_width(s, scale))
    while scale > 0.25 and _text_width(widest, scale) > width - text_x - 2:
        scale *= 0.9
    cap, _ = _line_height(scale)

    # Inset the gradient so labels centred on its ends stay inside the image.
    margin = min(cap // 2 + 4, (height - 1) // 2)
    bar_h = height - 2 * margin
    gradient = np.linspace(1.0, 0.0, bar_h, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    out[margin : margin + bar_h, bar_x0 : bar_x0 + bar_w] = apply_colormap(gradient, name)
    cv2.rectangle(
        out, (bar_x0 - 1, margin - 1), (bar_x0 + bar_w, margin + bar_h), _INK, 1, cv2.LINE_8
    )

    top, bottom = margin, margin + bar_h - 1
    for label, y in zip(labels, (top, (top + bottom) // 2, bottom), strict=True):
        cv2.line(out, (bar_x0 + bar_w, y), (bar_x0 + bar_w + tick_len, y), _INK, 1, cv2.LINE_8)
        cv2.putText(out, label, (text_x, y + cap // 2), _FONT, scale, _INK, 1, cv2.LINE_AA)
    return out
