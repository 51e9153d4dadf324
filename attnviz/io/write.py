"""Encode images and arrays, written atomically by io.files: never half a file on disk."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from attnviz.choices import FORMATS
from attnviz.errors import AttnvizError, UsageError
from attnviz.io.files import atomic_write_bytes

# PNG level 1 with the up filter: lossless, about 3x faster to encode than level 3 for
# files about 8 % larger; encoding competes with the forward pass for the CPU.
# OpenCV >= 4.10 lets the caller pick PNG's row filter; older ones try all five per row.
_PNG_FILTER_UP = (
    [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    if hasattr(cv2, "IMWRITE_PNG_FILTER")
    else []
)
_ENCODE_PARAMS: dict[str, tuple[str, list[int]]] = {
    # zlib level 1 with the "up" filter only: 15 ms for a 0.66-Mpx triptych against 41 ms
    # at level 3 with adaptive filters, for files 8 % larger; PNG encoding is most of a
    # figure's cost, and on a CPU it competes with the forward pass for the same cores.
    "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1, *_PNG_FILTER_UP]),
    "jpg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    "webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 95]),
}
# The WebP format itself cannot store larger images; check first for a clear message.
_WEBP_MAX_SIDE = 16383
# Fixed zip timestamp so the same arrays always give byte-identical .npz files.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """Encode an RGB uint8 (H, W, 3) array as `fmt` ("png", "jpg" or "webp").

    The rest of attnviz is RGB throughout; OpenCV's encoders expect BGR, so images swap
    channels here on their way out (video frames do the same in io/video.py).
    """
    if fmt not in _ENCODE_PARAMS:
        raise UsageError(f"unknown image format {fmt!r} (choose from {', '.join(FORMATS)})")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if fmt == "webp" and max(h, w) > _WEBP_MAX_SIDE:
        raise AttnvizError(
            f"cannot encode {w}x{h} image as webp (at most {_WEBP_MAX_SIDE} px a side; use png)"
        )
    ext, params = _ENCODE_PARAMS[fmt]
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(ext, bgr, params)
    except cv2.error as exc:
        ok, buf = False, None
        detail = str(exc).strip().splitlines()[-1]
    else:
        detail = "encoder refused the image"
    if not ok or buf is None:
        raise AttnvizError(f"cannot encode {w}x{h} image as {fmt} ({detail})")
    return buf.tobytes()


def write_image(path: str | os.PathLike[str], image: np.ndarray, fmt: str) -> None:
    """Encode an RGB uint8 image as `fmt` and write it atomically to `path`."""
    atomic_write_bytes(Path(path), encode_image(image, fmt))


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as float32 to a compressed .npz, readable with np.load, atomically.

    Built by hand rather than with np.savez_compressed: that takes names as keyword
    arguments (so keys like "file" clash) and stamps the current time into the zip.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as member:
                arr = np.ascontiguousarray(value, dtype=np.float32)
                np.lib.format.write_array(member, arr, allow_pickle=False)
    atomic_write_bytes(Path(path), buf.getvalue())
