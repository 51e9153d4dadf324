"""Spec of attnviz.render: pure numpy rendering of attention triptychs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from attnviz.errors import UsageError
from attnviz.render import (
    COLORMAPS,
    LayerMaps,
    apply_colormap,
    blend,
    normalize,
    render_triptych,
    resolve_colormap,
    upsample,
)
from attnviz.render.panels import caption, caption_height, colorbar, colorbar_width
from attnviz.render.triptych import (
    compose_triptych,
    compute_layout,
    content_size,
    fit_image,
    panel_size,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _layer(name: str = "layer", shape: tuple[int, int] = (7, 7), seed: int = 0) -> LayerMaps:
    rng = np.random.default_rng(seed)
    return LayerMaps(name, rng.uniform(0, 1, shape), rng.uniform(0, 5, shape))


# --- colormaps --------------------------------------------------------------------------------


def test_colormap_names_cover_the_common_opencv_maps() -> None:
    for name in ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "parula", "hot", "bone"):
        assert name in COLORMAPS


def test_the_colormap_names_are_every_colormap_of_the_installed_opencv() -> None:
    import cv2

    from attnviz.choices import COLORMAP_NAMES

    installed = {a.removeprefix("COLORMAP_").lower() for a in dir(cv2) if a.startswith("COLORMAP_")}
    assert set(COLORMAP_NAMES) == installed
    assert {name: getattr(cv2, f"COLORMAP_{name.upper()}") for name in COLORMAP_NAMES} == COLORMAPS


def test_resolve_colormap_is_case_insensitive() -> None:
    assert resolve_colormap("Viridis") == COLORMAPS["viridis"]


def test_unknown_colormap_lists_names_and_suggests_close_match() -> None:
    with pytest.raises(UsageError) as info:
        resolve_colormap("virdis")
    message = str(info.value)
    assert "viridis" in message
    assert "did you mean" in message
    assert "jet" in message and "turbo" in message
    assert "\n" not in message


def test_apply_colormap_returns_rgb_not_bgr() -> None:
    rgb = apply_colormap(np.array([[0.0, 1.0]]), "jet")
    assert rgb.shape == (1, 2, 3) and rgb.dtype == np.uint8
    low, high = rgb[0, 0].astype(int), rgb[0, 1].astype(int)
    assert low[2] > low[0]  # jet 0 is blue
    assert high[0] > high[2]  # jet 1 is red


def test_apply_colormap_clips_out_of_range_values() -> None:
    clipped = apply_colormap(np.array([[-3.0, 7.0]]), "jet")
    assert np.array_equal(clipped, apply_colormap(np.array([[0.0, 1.0]]), "jet"))


# --- panels -----------------------------------------------------------------------------------


def test_normalize_returns_unit_range_and_original_bounds() -> None:
    out, lo, hi = normalize(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert out.dtype == np.float32
    assert (lo, hi) == (2.0, 10.0)
    assert out.min() == 0.0 and out.max() == 1.0


def test_normalize_constant_map_is_zeros_without_nan() -> None:
    out, lo, hi = normalize(np.full((3, 4), 0.7))
    assert np.array_equal(out, np.zeros((3, 4), np.float32))
    assert lo == hi == pytest.approx(0.7)


def test_upsample_takes_height_width() -> None:
    out = upsample(np.zeros((7, 5)), (40, 90))
    assert out.shape == (40, 90) and out.dtype == np.float32


def test_blend_alpha_is_heatmap_weight() -> None:
    image = np.full((2, 2, 3), 200, np.uint8)
    heat = np.zeros((2, 2, 3), np.uint8)
    assert np.array_equal(blend(image, heat, 0.0), image)
    assert np.array_equal(blend(image, heat, 1.0), heat)
    assert np.all(blend(image, heat, 0.5) == 100)


def test_caption_strip_height_depends_only_on_width() -> None:
    panel = np.zeros((50, 240, 3), np.uint8)
    short = caption(panel, "a")
    long = caption(panel, "a very long caption that will certainly not fit on one line " * 3)
    assert short.shape == long.shape == (50 + caption_height(240), 240, 3)
    assert np.array_equal(long[-50:], panel)  # strip goes above, panel untouched


def test_colorbar_size_and_direction() -> None:
    bar = colorbar(200, "jet", 0.0, 1.0)
    assert bar.shape == (200, colorbar_width(200), 3) and bar.dtype == np.uint8
    assert colorbar_width(200) >= 60
    # Sample the gradient column near the top (high) and bottom (low).
    column = bar[:, 8].astype(int)
    top, bottom = column[15], column[-15]
    assert top[0] > top[2]  # high = red
    assert bottom[2] > bottom[0]  # low = blue


# --- triptych ---------------------------------------------------------------------------------


GREY = 128  # the letterbox colour around content that does not fill its panel


def _panel(
    out: np.ndarray, image_shape: tuple[int, ...], panel_height: int, col: int
) -> np.ndarray:
    layout = compute_layout(image_shape, panel_height)
    y, x = layout.panel_origin(0, col)
    return out[y : y + layout.panel_height, x : x + layout.panel_width]


def test_fit_image_keeps_aspect_and_never_crops() -> None:
    assert fit_image(_image(100, 300), 200).shape == (200, 600, 3)
    assert fit_image(_image(400, 100), 200).shape == (200, 50, 3)
    assert fit_image(_image(1000, 1), 10).shape == (10, 1, 3)
    assert fit_image(_image(1, 1000), 10).shape == (1, 40, 3)


@pytest.mark.parametrize(("h", "w"), [(100, 100), (120, 160), (100, 400), (400, 100), (97, 25)])
def test_ordinary_aspect_ratios_fill_the_panel_exactly(h: int, w: int) -> None:
    # Between 1:4 and 4:1 the panel has the image's own aspect ratio: no letterbox.
    assert panel_size((h, w), 200) == content_size((h, w), 200) == (200, round(w * 200 / h))


@pytest.mark.parametrize("panel_height", [1, 3, 10, 200, 320])
def test_panel_width_is_clamped_to_a_quarter_and_four_times_its_height(panel_height: int) -> None:
    narrowest, widest = max(1, round(panel_height / 4)), 4 * panel_height
    assert panel_size((5000, 1), panel_height) == (panel_height, narrowest)
    assert panel_size((1, 5000), panel_height) == (panel_height, widest)


def test_a_1x5000_image_gives_a_panel_4x_as_tall_as_wide_content_letterboxed() -> None:
    image = _image(5000, 1)  # 1 px wide, 5000 px tall
    layout = compute_layout(image.shape, 200)
    assert (layout.panel_height, layout.panel_width) == (200, 50)
    out = render_triptych(image, [_layer()], panel_height=200)
    assert out.shape == (layout.height(1), layout.width, 3)
    # The photo keeps its aspect (a 1-px column, full height), centred on grey.
    panel = _panel(out, image.shape, 200, 0)
    assert np.array_equal(panel[:, 24:25], fit_image(image, 200))
    assert np.all(panel[:, :24] == GREY) and np.all(panel[:, 25:] == GREY)


def test_a_5000x1_image_panel_is_at_most_4x_panel_height_wide() -> None:
    image = _image(1, 5000)  # 5000 px wide, 1 px tall
    layout = compute_layout(image.shape, 200)
    assert (layout.panel_height, layout.panel_width) == (200, 800)
    out = render_triptych(image, [_layer()], panel_height=200)
    assert out.shape == (layout.height(1), layout.width, 3)
    panel = _panel(out, image.shape, 200, 0)
    assert np.array_equal(panel[99:100], fit_image(image, 200))
    assert np.all(panel[:99] == GREY) and np.all(panel[100:] == GREY)


def test_tall_image_is_pillarboxed_and_centred_in_all_three_panels() -> None:
    image = _image(1000, 100)  # 1:10, beyond 1:4
    assert content_size(image.shape, 200) == (200, 20)
    out = render_triptych(image, [_layer()], panel_height=200)
    for col in range(3):
        panel = _panel(out, image.shape, 200, col)
        assert panel.shape == (200, 50, 3)
        # 15 px of grey either side of the 20-px-wide content; the content itself is not grey.
        assert np.all(panel[:, :15] == GREY) and np.all(panel[:, 35:] == GREY)
        assert not np.all(panel[:, 15:35] == GREY)


def test_wide_image_is_letterboxed_and_maps_cover_only_the_image() -> None:
    image = _image(100, 2000)  # 20:1, beyond 4:1
    assert content_size(image.shape, 100) == (20, 400)
    layer = LayerMaps("attn", np.full((3, 3), 0.5), np.ones((3, 3)))
    out = render_triptych(image, [layer], cmap="jet", panel_height=100)
    weights = _panel(out, image.shape, 100, 1)
    assert weights.shape == (100, 400, 3)
    assert np.all(weights[:40] == GREY) and np.all(weights[60:] == GREY)
    mid = apply_colormap(np.array([[0.5]]), "jet")[0, 0]
    assert np.all(weights[40:60] == mid)


def test_layout_wide_image_keeps_whole_original_panel() -> None:
    image = _image(100, 300)
    layout = compute_layout(image.shape, 200)
    assert (layout.panel_height, layout.panel_width) == (200, 600)

    out = render_triptych(image, [_layer()], panel_height=200)
    assert out.dtype == np.uint8 and out.shape == (layout.height(1), layout.width, 3)
    # Panel 1 is the whole image resized, not a crop.
    y, x = layout.panel_origin(0, 0)
    assert np.array_equal(out[y : y + 200, x : x + 600], fit_image(image, 200))


def test_three_panels_share_one_height() -> None:
    image = _image(120, 160)
    layout = compute_layout(image.shape, 240)
    out = render_triptych(image, [_layer()], panel_height=240)
    origins = [layout.panel_origin(0, col) for col in range(3)]
    assert len({y for y, _ in origins}) == 1
    for y, x in origins:
        region = out[y : y + layout.panel_height, x : x + layout.panel_width]
        assert region.shape == (240, layout.panel_width, 3)
    assert out.shape[0] == layout.row_height


def test_several_layers_show_the_photo_once_then_one_row_of_maps_per_layer() -> None:
    image = _image(64, 64)
    one = render_triptych(image, [_layer("a")], panel_height=128)
    two = render_triptych(image, [_layer("a"), _layer("b", seed=1)], panel_height=128)
    layout = compute_layout(image.shape, 128)
    photo_width, step = layout.panel_width + layout.gutter, layout.row_height + layout.gutter
    assert two.shape[:2] == (layout.height(3), one.shape[1] - photo_width)
    # Line 1: the photo and its caption, as a one-layer figure starts.
    assert np.array_equal(
        two[: layout.row_height, : layout.panel_width], one[:, : layout.panel_width]
    )
    assert (two[: layout.row_height, layout.panel_width :] == 255).all()
    # Line 2: layer a's maps and keys, as the one-layer figure draws them after the photo.
    assert np.array_equal(two[step : step + layout.row_height], one[:, photo_width:])
    assert not np.array_equal(two[2 * step :], two[step : step + layout.row_height])


def test_the_grid_draws_grad_cam_once_however_many_layers() -> None:
    image = _image(64, 64)
    layers = [_layer(name, seed=i) for i, name in enumerate("abc")]
    panels = ("original", "map", "weighted", "gradcam")
    cam = np.random.default_rng(0).random((7, 7))
    grid = render_triptych(image, layers, panels=panels, columns=2, gradcam=cam, panel_height=96)
    # The photo and Grad-CAM share one line; each layer's map and weighted features one each.
    assert grid.shape[0] == compute_layout(image.shape, 96).height(1 + len(layers))


def _map_alone(image: np.ndarray, layer: LayerMaps, panel_height: int) -> np.ndarray:
    """The image area of ``layer``'s map panel as a one-layer figure of just that map draws it."""
    one = render_triptych(image, [layer], panels=("map",), panel_height=panel_height)
    layout = compute_layout(image.shape, panel_height)
    y, x = layout.panel_origin(0, 0)
    return one[y : y + layout.panel_height, x : x + layout.panel_width]


@pytest.mark.parametrize(
    ("shape", "panels", "columns"),
    [
        ((60, 80), ("original", "map", "weighted"), None),
        ((60, 80), ("original", "gradcam", "weighted", "contours", "map"), 2),
        ((40, 400), ("map", "weighted"), None),  # letterboxed: the box is the whole panel
        ((200, 30), ("weighted", "original", "map"), 3),
    ],
)
def test_map_boxes_frame_each_layers_map_wherever_the_layout_puts_it(
    shape: tuple[int, int], panels: tuple[str, ...], columns: int | None
) -> None:
    image = _image(*shape)
    layers = [_layer(name, seed=i) for i, name in enumerate(("a", "b", "c"))]
    # A channel gate adds a panel after b's map: c's row is shorter than b's.
    layers[1] = LayerMaps("b", layers[1].weights, layers[1].weighted, channels=np.linspace(0, 1, 8))
    cam = np.random.default_rng(0).random((5, 5))
    kwargs = {"panels": panels, "columns": columns, "gradcam": cam, "panel_height": 72}

    drawn = compose_triptych(image, layers, **kwargs)

    assert np.array_equal(drawn.image, render_triptych(image, layers, **kwargs))
    assert list(drawn.map_boxes) == ["a", "b", "c"]
    for layer in layers:
        x, y, width, height = drawn.map_boxes[layer.name]
        crop = drawn.image[y : y + height, x : x + width]
        assert np.array_equal(crop, _map_alone(image, layer, 72)), layer.name


def test_only_layers_drawn_with_a_map_panel_get_a_box() -> None:
    image = _image(60, 80)
    layout = compute_layout(image.shape, 100)
    one = compose_triptych(image, [_layer("a")], panel_height=100)
    y, x = layout.panel_origin(0, 1)  # original | map | weighted
    assert one.map_boxes == {"a": (x, y, layout.panel_width, layout.panel_height)}
    layers = [_layer("a"), _layer("b", seed=1)]
    assert compose_triptych(image, layers, panels=("original", "weighted")).map_boxes == {}


def test_render_is_deterministic() -> None:
    image = _image(90, 120)
    layers = [_layer("a", (5, 6)), _layer("b", (10, 12), seed=3)]
    first = render_triptych(image, layers, cmap="turbo", alpha=0.4, panel_height=150)
    second = render_triptych(image.copy(), layers, cmap="turbo", alpha=0.4, panel_height=150)
    assert first.tobytes() == second.tobytes()


def test_weights_panel_shows_absolute_map_colours() -> None:
    weights = np.zeros((4, 4))
    weights[:, :2] = 1.0  # left half high, right half low
    layer = LayerMaps("attn", weights, np.ones((4, 4)))
    image = _image(100, 100)
    layout = compute_layout(image.shape, 200)
    out = render_triptych(image, [layer], cmap="jet", panel_height=200)
    y, x = layout.panel_origin(0, 1)
    mid = y + layout.panel_height // 2
    left = out[mid, x + layout.panel_width // 10].astype(int)
    right = out[mid, x + 9 * layout.panel_width // 10].astype(int)
    assert left[0] > left[2]  # red-ish
    assert right[2] > right[0]  # blue-ish


def test_weights_panel_is_not_stretched() -> None:
    # A flat 0.5 map must look mid-scale (jet: green-ish), not like the extreme of a stretch.
    layer = LayerMaps("attn", np.full((3, 3), 0.5), np.ones((3, 3)))
    image = _image(50, 50)
    layout = compute_layout(image.shape, 100)
    out = render_triptych(image, [layer], cmap="jet", panel_height=100)
    y, x = layout.panel_origin(0, 1)
    assert np.array_equal(out[y + 50, x + 50], apply_colormap(np.array([[0.5]]), "jet")[0, 0])


def test_render_rejects_empty_layers_bad_image_and_bad_cmap() -> None:
    with pytest.raises(ValueError):
        render_triptych(_image(10, 10), [])
    with pytest.raises(ValueError):
        render_triptych(np.zeros((10, 10), np.uint8), [_layer()])
    with pytest.raises(UsageError):
        render_triptych(_image(10, 10), [_layer()], cmap="nope")


def test_a_layer_with_nothing_of_its_own_to_draw_adds_no_row() -> None:
    """--panels original,channels over layers of which only some have channel weights: the
    photo once, then a row for each layer that has them."""
    image = _image(64, 64)
    plain, gated = _layer("plain"), replace(_layer("gated", seed=1), channels=np.linspace(0, 1, 8))
    figure = render_triptych(
        image, [plain, gated], panels=("original", "channels"), panel_height=96
    )
    layout = compute_layout(image.shape, 96)
    assert figure.shape[0] == layout.height(2)
    with pytest.raises(ValueError, match="nothing to draw"):
        render_triptych(image, [plain], panels=("channels",), panel_height=96)
