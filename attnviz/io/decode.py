"""Decode any image Pillow can read into an upright 8-bit RGB array."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from attnviz.choices import DEFAULT_MAX_PIXELS
from attnviz.errors import AttnvizError

# attnviz enforces its own, configurable limit (see decode_image); Pillow's fixed one
# would warn or refuse with a message about "DOS attacks" that users cannot act on.
Image.MAX_IMAGE_PIXELS = None

# Transparent areas become neutral grey: black or white would read as strong features.
BACKGROUND = (128, 128, 128)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    return reason if len(reason) <= 100 else reason[:97] + "..."


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-depth array to uint8 without clipping to white."""
    if mode.startswith("I;16"):
        return np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, np.uint8)
    lo, hi = float(data[finite].min()), float(data[finite].max())
    if mode == "I" and lo >= 0 and hi <= 65535:
        # 'I' almost always holds 16-bit samples (PNG, TIFF) widened to int32.
        scaled = data / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled = data * 255.0
    else:
        # Arbitrary range (signed ints, HDR floats): stretch what is there to 0..255.
        scaled = (data - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(data)
    return np.rint(np.where(finite, scaled, 0.0)).clip(0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        grey = _to_uint8(np.asarray(img), img.mode)
        return Image.fromarray(grey).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Decoded:
    """An upright uint8 (H, W, 3) RGB photo, with notes the user should hear about.

    ``size`` is the photo's own upright (width, height); ``rgb`` may be smaller when the
    decoder was allowed to reduce it (see ``decode_image``'s ``min_side``).
    """

    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None

    @property
    def original_hw(self) -> tuple[int, int]:
        if self.size is None:
            return self.rgb.shape[0], self.rgb.shape[1]
        return self.size[1], self.size[0]


def _reduce_while_decoding(img: Image.Image, min_side: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when its shorter side stays >= min_side.

    The DCT scales while it decodes (Pillow's draft mode), so a 24-Mpx photo costs about a
    64th of its full decode; the figure and the network never need more pixels than that.
    """
    width, height = img.size
    shorter = min(width, height)
    if img.format != "JPEG" or shorter < 2 * min_side:
        return
    # Pillow picks the largest reduction keeping both sides at least the requested ones.
    img.draft(img.mode, (width * min_side // shorter, height * min_side // shorter))


def decode_image(
    path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Decoded:
    """Decode `path` to a C-contiguous uint8 RGB array, EXIF-upright.

    Animated images give their first frame (and a note saying so). Images whose header
    claims more than `max_pixels` are refused before any pixel is decoded. Raises
    AttnvizError naming the file for anything missing, not an image, truncated or corrupt.
    With ``min_side``, a large JPEG may be decoded at a reduced scale whose shorter side is
    still at least ``min_side`` pixels.
    """
    notes: list[str] = []
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise AttnvizError(
                    f"{path}: refused: {width}x{height} is {width * height:,} pixels, "
                    f"over the limit of {max_pixels:,} (raise it with --max-pixels)"
                )
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"animated ({frames} frames): used the first frame")
            if min_side is not None:
                _reduce_while_decoding(img, min_side)
            # load() inside the try: Image.open only reads the header, truncation shows here.
            img.load()
            upright = ImageOps.exif_transpose(img) or img  # None only when in_place=True
            rgb = _to_rgb(upright)
            turned = upright.size != img.size and upright.size == img.size[::-1]
            size = (height, width) if turned else (width, height)
    except AttnvizError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise all sorts on bad files
        raise AttnvizError(f"{path}: cannot decode image ({_reason(exc)})") from exc
    return Decoded(np.ascontiguousarray(np.array(rgb, dtype=np.uint8)), notes, size)


def load_rgb(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The photo of decode_image(), for callers that need no notes."""
    return decode_image(Path(path), max_pixels).rgb
