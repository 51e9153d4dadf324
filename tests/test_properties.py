"""Properties over random images: any size, Pillow mode and file format decodes and renders.

Every image Pillow can write (mode x format below) must come back from ``load_rgb`` as RGB uint8
of the written size, and give a triptych whose size is exactly what ``compute_layout`` says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import attnviz
from attnviz.errors import AttnvizError
from attnviz.io import load_rgb
from attnviz.models import LoadedModel
from attnviz.render import LayerMaps, render_triptych
from attnviz.render.triptych import (
    MAX_ASPECT,
    compute_layout,
    content_size,
    fit_image,
    panel_size,
)

MODES = ("RGB", "RGBA", "L", "LA", "P", "P+transparency", "I;16", "I", "F", "CMYK", "1")
# Modes Pillow can write in each format; the rest raise "cannot write mode X as Y" on save.
WRITABLE = {
    "PNG": ("RGB", "RGBA", "L", "LA", "P", "P+transparency", "I;16", "1"),
    "JPEG": ("RGB", "L", "CMYK", "1"),
    "TIFF": MODES,
    "WEBP": MODES,  # Pillow converts to RGB(A) on save
    "BMP": ("RGB", "RGBA", "L", "P", "P+transparency", "1"),
    "GIF": tuple(m for m in MODES if m != "CMYK"),
}
CASES = [(mode, fmt) for fmt, modes in WRITABLE.items() for mode in modes]

# (width, height): ordinary sizes, plus strips far beyond the 1:4..4:1 panel clamp.
_side = st.integers(1, 600)
_strip = st.tuples(st.integers(1, 4), st.integers(1000, 2000))
SIZES = st.one_of(st.tuples(_side, _side), _strip, _strip.map(lambda s: (s[1], s[0])))
# "wild" puts full-range, negative and non-finite values in the high-depth modes (I, F).
FLAVOURS = st.sampled_from(["random", "constant", "wild"])

# No deadline: examples vary from a 1x1 PNG to a 600x600 TIFF, and the first pays torch's warm-up.
SLOW = settings(deadline=None)
GREY = 128  # the letterbox around content that does not fill its panel


def _values(
    mode: str, shape: tuple[int, int], rng: np.random.Generator, flavour: str
) -> np.ndarray:
    """Pixel data for a high-depth single-band mode (I;16, I, F)."""
    if mode == "I;16":
        return rng.integers(0, 65536, shape, dtype=np.uint16)
    if mode == "I":
        if flavour == "wild":
            return rng.integers(-(2**31), 2**31, shape, dtype=np.int64).astype(np.int32)
        return rng.integers(0, 65536, shape, dtype=np.int32)
    values = rng.uniform(0, 1, shape).astype(np.float32)
    if flavour == "wild":
        values = (values * 2e6 - 1e6).astype(np.float32)
        values.flat[rng.integers(0, values.size, 3)] = [np.nan, np.inf, -np.inf]
    return values


def make_image(mode: str, size: tuple[int, int], seed: int, flavour: str) -> Image.Image:
    """A ``size`` = (width, height) image in ``mode`` ("P+transparency": P, index 0 clear)."""
    w, h = size
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        values = _values(mode, (h, w), rng, flavour)
        if flavour == "constant":
            values = np.full_like(values, values.flat[0])
        return Image.frombytes(mode, size, values.tobytes())  # raw mode = mode: native order
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    base = mode[0] if mode.startswith("P") else mode
    data = rng.integers(0, 256, (h, w, len(base)), dtype=np.uint8)
    if flavour == "constant":
        data[:] = data[0, 0]
    image = Image.frombytes(base, size, data.tobytes())
    if base == "P":
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        if mode == "P+transparency":
            image.info["transparency"] = 0
    return image


# Module-scoped, not tmp_path: hypothesis reruns the test body but not function-scoped fixtures.
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


@pytest.fixture(scope="module")
def model() -> Iterator[LoadedModel]:
    # One thread: a 96-px forward is too small to split, and on a busy 2-core machine two OpenMP
    # threads spin-waiting on each other made it ~30x slower (17 s instead of 0.6 s for 40).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # 96 px input instead of 224: a few times faster on CPU, still 12x12 down to 3x3 maps.
    yield attnviz.load_model("lite0-cbam", device="cpu", random_init=True, size=96)
    torch.set_num_threads(threads)


def _write(image: Image.Image, fmt: str, folder: Path) -> Path:
    path = folder / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    return path


@settings(SLOW, max_examples=100)
@given(case=st.sampled_from(CASES), size=SIZES, seed=st.integers(0, 2**32 - 1), flavour=FLAVOURS)
def test_any_writable_image_decodes_to_rgb_of_its_size(
    workdir: Path, case: tuple[str, str], size: tuple[int, int], seed: int, flavour: str
) -> None:
    mode, fmt = case
    path = _write(make_image(mode, size, seed, flavour), fmt, workdir)
    rgb = load_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert rgb.shape == (size[1], size[0], 3)


@settings(SLOW, max_examples=60)
@given(
    case=st.sampled_from(CASES),
    size=SIZES,
    seed=st.integers(0, 2**32 - 1),
    panel_height=st.integers(8, 320),
)
def test_any_decoded_image_renders_a_triptych_of_the_layout_size(
    workdir: Path,
    model: LoadedModel,
    case: tuple[str, str],
    size: tuple[int, int],
    seed: int,
    panel_height: int,
) -> None:
    mode, fmt = case
    image = load_rgb(_write(make_image(mode, size, seed, "random"), fmt, workdir))
    with torch.inference_mode(), attnviz.capture(model, "all") as maps:
        model(model.preprocess([image]))
    out = attnviz.triptych(image, maps, panel_height=panel_height)

    layout = compute_layout(image.shape, panel_height)
    assert out.dtype == np.uint8
    if len(maps) == 1:
        assert out.shape == (layout.height(1), layout.width, 3)
    else:  # the photo once on a line of its own, then each layer's map and weighted features
        rows = replace(layout, panels=2)
        assert out.shape == (rows.height(len(maps) + 1), rows.width, 3)


@settings(max_examples=300)
@given(h=st.integers(1, 5000), w=st.integers(1, 5000), panel_height=st.integers(1, 1000))
def test_panel_aspect_is_clamped_and_content_keeps_the_image_aspect(
    h: int, w: int, panel_height: int
) -> None:
    ph, pw = panel_size((h, w), panel_height)
    ch, cw = content_size((h, w), panel_height)
    assert ph == panel_height
    assert max(1, round(ph / MAX_ASPECT)) <= pw <= MAX_ASPECT * ph
    # Content fits the panel, and is the image scaled to the panel's full height or full width.
    assert 1 <= ch <= ph and 1 <= cw <= pw
    full_height = (ph, max(1, round(w * ph / h)))
    full_width = (max(1, round(h * pw / w)), pw)
    assert (ch, cw) in (full_height, full_width)
    if h <= MAX_ASPECT * w and w <= MAX_ASPECT * h:  # ordinary aspect: fills it, no letterbox
        assert (ch, cw) == (ph, pw)


@settings(SLOW, max_examples=60)
@given(
    size=SIZES,
    map_shape=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    panel_height=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_panels_show_the_whole_image_centred_on_grey(
    size: tuple[int, int], map_shape: tuple[int, int], panel_height: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    layer = LayerMaps("attn", rng.uniform(0, 1, map_shape), rng.uniform(0, 5, map_shape))
    out = render_triptych(image, [layer], panel_height=panel_height)

    layout = compute_layout(image.shape, panel_height)
    assert out.shape == (layout.height(1), layout.width, 3)
    ch, cw = content_size(image.shape, panel_height)
    top, left = (layout.panel_height - ch) // 2, (layout.panel_width - cw) // 2
    for col in range(3):
        y, x = layout.panel_origin(0, col)
        panel = out[y : y + layout.panel_height, x : x + layout.panel_width].copy()
        if col == 0:  # the photo, whole and resized, never cropped
            assert np.array_equal(
                panel[top : top + ch, left : left + cw], fit_image(image, panel_height)
            )
        panel[top : top + ch, left : left + cw] = GREY
        assert np.all(panel == GREY)  # everything around the content is the letterbox


def _valid_file_bytes(fmt: str) -> bytes:
    import io

    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


VALID_FILES = {fmt: _valid_file_bytes(fmt) for fmt in ("PNG", "JPEG", "TIFF", "GIF", "WEBP", "BMP")}


@settings(SLOW, max_examples=300)
@given(
    fmt=st.sampled_from(sorted(VALID_FILES)),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_a_damaged_file_decodes_or_fails_with_one_clear_error(
    tmp_path_factory: pytest.TempPathFactory,
    fmt: str,
    edits: list[tuple[int, int]],
    cut: int | None,
) -> None:
    """Bytes overwritten or cut off anywhere: never a crash, only AttnvizError naming the file."""
    data = bytearray(VALID_FILES[fmt])
    for offset, value in edits:
        data[offset % len(data)] = value
    path = tmp_path_factory.mktemp("damaged") / f"photo.{fmt.lower()}"
    path.write_bytes(bytes(data[:cut] if cut is not None else data))
    try:
        rgb = load_rgb(path)
    except AttnvizError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
