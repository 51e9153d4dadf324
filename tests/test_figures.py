"""Spec of the figure options: --panels, --layout, --panel-size, --norm and --stats.

End to end through the real CLI and the shipped model, on photos written by the tests;
units where the arithmetic is the point (colour ranges, map statistics).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnviz.engine.figures import map_stats
from attnviz.render import LayerMaps, apply_colormap
from attnviz.render.panels import caption_height, colorbar_width
from attnviz.render.triptych import GUTTER, compute_layout, draw_panels
from tests.conftest import attnviz, summary_count, write_photo


def records(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {Path(r["input"]).name: r for r in map(json.loads, lines) if "outputs" in r}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_photo(folder / "a.jpg", (120, 80), seed=1)
    write_photo(folder / "b.jpg", (90, 90), seed=2)
    write_photo(folder / "c.png", (64, 100), seed=3)
    return folder


# --- panels and layouts ----------------------------------------------------------------------


def test_panels_are_drawn_in_the_order_asked_with_one_key_per_scale(photos: Path) -> None:
    out = photos.parent / "out"
    code, output = attnviz(
        "run", photos / "a.jpg", "--out", out, "--panels", "original,contours,gradcam",
        "--panel-size", "160",
    )  # fmt: skip
    assert code == 0, output
    figure = pixels(out / "a.png")
    layout = compute_layout((80, 120), 160)
    # Three image panels and one colour key (only the Grad-CAM has a colour scale).
    assert figure.shape[1] == 3 * layout.panel_width + colorbar_width(160) + 3 * GUTTER
    y, x0 = layout.panel_origin(0, 0)
    original = figure[y : y + 160, x0 : x0 + layout.panel_width].astype(int)
    _, x1 = layout.panel_origin(0, 1)
    contours = figure[y : y + 160, x1 : x1 + layout.panel_width].astype(int)
    # The outline is drawn in yellow over the photo; the rest of the panel is the photo.
    changed = np.abs(contours - original).sum(axis=2) > 60
    assert 0.005 < changed.mean() < 0.5
    yellow = contours[changed]
    assert (yellow[:, 0] > 150).mean() > 0.3 and (yellow[:, 2] < 100).mean() > 0.3


def test_grid_layout_wraps_panels_and_separate_writes_one_file_per_panel(photos: Path) -> None:
    out = photos.parent / "out"
    code, output = attnviz("run", photos / "a.jpg", "--out", out, "--layout", "grid")
    assert code == 0, output
    layout = compute_layout((80, 120), 320)
    grid = pixels(out / "a.png")
    assert grid.shape[0] == 2 * layout.row_height + GUTTER  # 3 panels: 2 per line

    code, output = attnviz("run", photos / "a.jpg", "--out", out, "--layout", "separate")
    assert code == 0, output
    written = {p.name for p in out.iterdir()} - {"manifest.jsonl", "a.png"}
    assert written == {
        "a.original.png", "a.map.png", "a.map-key.png", "a.weighted.png", "a.weighted-key.png",
    }  # fmt: skip
    # Bare panels for paper figures: the photo's own aspect, no caption strip.
    assert pixels(out / "a.original.png").shape == (320, 480, 3)
    assert pixels(out / "a.map-key.png").shape == (320, colorbar_width(320), 3)
    assert set(records(out)["a.jpg"]["outputs"]) == {
        "original", "map", "map-key", "weighted", "weighted-key",
    }  # fmt: skip


def test_separate_layout_names_layers_when_there_are_several(photos: Path) -> None:
    out = photos.parent / "out"
    code, output = attnviz(
        "run", photos / "b.jpg", "--model", "lite0-cbam", "--out", out, "--layout", "separate",
        "--layer", "all",
        "--panels", "map",
    )  # fmt: skip
    assert code == 0, output
    names = {p.name for p in out.glob("b.*.map.png")}
    assert names == {f"b.attention.{n}.map.png" for n in ("block4", "block10", "block15", "head")}
    # A rerun finds every one of those files and skips the photo.
    code, output = attnviz(
        "run", photos / "b.jpg", "--model", "lite0-cbam", "--out", out, "--layout", "separate",
        "--layer", "all",
        "--panels", "map",
    )  # fmt: skip
    assert code == 0 and summary_count(output, "processed") == 0


def test_records_say_where_each_layers_map_is_in_the_figure(photos: Path) -> None:
    out = photos.parent / "out"
    common = ("--model", "lite0-cbam", "--layer", "all", "--panel-height", "100")
    code, output = attnviz("run", photos / "a.jpg", "--out", out / "separate", *common,
                           "--layout", "separate", "--panels", "map")  # fmt: skip
    assert code == 0, output
    separate = records(out / "separate")["a.jpg"]
    assert "map_boxes" not in separate  # a file per map already
    layers = separate["layers"]
    assert len(layers) == 4
    for layout, panels in (
        ("row", "original,map,weighted"),
        ("grid", "original,weighted,contours,map"),
    ):
        code, output = attnviz("run", photos / "a.jpg", "--out", out / layout, *common,
                               "--layout", layout, "--panels", panels)  # fmt: skip
        assert code == 0, output
        record = records(out / layout)["a.jpg"]
        assert list(record["map_boxes"]) == layers
        figure = pixels(out / layout / record["outputs"]["figure"])
        for layer in layers:
            x, y, width, height = record["map_boxes"][layer]
            # The figure's map panel is the very map `--layout separate` writes bare.
            bare = pixels(out / "separate" / separate["outputs"][f"{layer}:map"])
            assert np.array_equal(figure[y : y + height, x : x + width], bare), (layout, layer)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--panels", "original,heat", "unknown panel 'heat'"),
        ("--panels", "map,map", "names a panel twice"),
        ("--layout", "tiles", "unknown layout 'tiles'"),
        ("--norm", "fixed:2,1", "fixed:LO,HI"),
        ("--norm", "per-image", "fixed:LO,HI"),
        ("--every", "0", "--every must be at least 1"),
    ],
)
def test_bad_figure_options_are_usage_errors(
    photos: Path, flag: str, value: str, message: str
) -> None:
    out = photos.parent / "out"
    code, output = attnviz("run", photos, "--out", out, flag, value)
    assert code == 2 and message in output and output.strip().count("\n") == 0
    assert not out.exists() or not any(out.iterdir())


def test_captions_grow_with_the_panel_size() -> None:
    small, large = compute_layout((300, 400), 320), compute_layout((300, 400), 1280)
    assert large.caption_height / small.caption_height > 2
    # The default size is what it always was: 0.8-scale captions on a 320-pixel panel.
    assert small.caption_height == caption_height(427)


# --- comparable maps -------------------------------------------------------------------------


def test_same_value_gets_the_same_colour_under_one_range() -> None:
    image = np.full((40, 40, 3), 128, np.uint8)
    low = LayerMaps("x", np.ones((2, 2)), np.array([[1.0, 2.0], [2.0, 2.0]]))
    high = LayerMaps("x", np.ones((2, 2)), np.array([[2.0, 4.0], [4.0, 4.0]]))

    def drawn(layer: LayerMaps, ranges: dict | None) -> np.ndarray:
        (panel,) = draw_panels(
            image, layer, panels=["weighted"], alpha=1.0, panel_height=40, ranges=ranges
        )
        return panel.image

    # Per image, the value 2 is the top of one map and the bottom of the other...
    assert not np.array_equal(drawn(low, None)[35, 35], drawn(high, None)[5, 5])
    # ...under one range it is the same colour in both, the colour the key gives it.
    shared = {"x": (1.0, 4.0)}
    assert np.array_equal(drawn(low, shared)[35, 35], drawn(high, shared)[5, 5])
    expected = apply_colormap(np.array([[1 / 3]], np.float32), "jet")[0, 0]
    assert np.array_equal(drawn(low, shared)[35, 35], expected)


def test_norm_global_draws_every_image_with_the_run_range(photos: Path) -> None:
    own, shared = photos.parent / "own", photos.parent / "shared"
    assert attnviz("run", photos, "--out", own)[0] == 0
    code, output = attnviz("run", photos, "--out", shared, "--norm", "global")
    assert code == 0, output
    per_image = [r["heat_ranges"]["attention.pool"] for r in records(own).values()]
    run_range = [min(lo for lo, _ in per_image), max(hi for _, hi in per_image)]
    assert {tuple(r["heat_ranges"]["attention.pool"]) for r in records(shared).values()} == {
        tuple(run_range)
    }
    # The run's range, given as a fixed range, draws exactly the same figures.
    fixed = photos.parent / "fixed"
    lo, hi = (repr(v) for v in run_range)
    assert attnviz("run", photos, "--out", fixed, "--norm", f"fixed:{lo},{hi}")[0] == 0
    names = ("a.png", "b.png", "c.png")
    for name in names:
        assert (fixed / name).read_bytes() == (shared / name).read_bytes()
    # Only a photo that holds both ends of the run's range looks as it does on its own.
    assert any((own / n).read_bytes() != (shared / n).read_bytes() for n in names)


def test_norm_global_range_covers_new_inputs_on_a_rerun(photos: Path) -> None:
    # Each photo's own range, to pick one that alone holds an end of the run's range.
    own = photos.parent / "own"
    assert attnviz("run", photos, "--out", own)[0] == 0
    ranges = {name: r["heat_ranges"]["attention.pool"] for name, r in records(own).items()}
    lows, highs = sorted(lo for lo, _ in ranges.values()), sorted(hi for _, hi in ranges.values())
    widening = next(
        name for name, (lo, hi) in ranges.items()
        if (lo == lows[0] and lo < lows[1]) or (hi == highs[-1] and hi > highs[-2])
    )  # fmt: skip
    others = [photos / name for name in ranges if name != widening]

    out = photos.parent / "out"
    assert attnviz("run", *others, "--out", out, "--norm", "global")[0] == 0
    first = records(out)[others[0].name]["heat_ranges"]
    code, output = attnviz("run", photos, "--out", out, "--norm", "global")
    assert code == 0, output
    after = records(out)
    assert len({json.dumps(r["heat_ranges"]) for r in after.values()}) == 1
    # The new photo widened the range, so the earlier figures were redrawn with it.
    assert after[others[0].name]["heat_ranges"] != first
    assert summary_count(output, "processed") == 3
    # A rerun with nothing new finds every figure up to date.
    code, output = attnviz("run", photos, "--out", out, "--norm", "global")
    assert code == 0 and summary_count(output, "processed") == 0, output


# --- statistics ------------------------------------------------------------------------------


def test_map_statistics_read_like_their_definitions() -> None:
    flat = map_stats(np.full((10, 10), 0.5), (100, 100))
    assert flat["entropy"] == pytest.approx(1.0) and flat["mass_top10"] == pytest.approx(0.1)
    spot = np.zeros((10, 10))
    spot[2, 7] = 0.9
    peaked = map_stats(spot, (100, 200))
    assert peaked["entropy"] == 0.0 and peaked["mass_top10"] == 1.0
    assert peaked["max"] == 0.9 and peaked["peak_xy"] == [150.0, 25.0]


def test_stats_csv_has_one_row_per_image_and_layer(photos: Path) -> None:
    out, table = photos.parent / "out", photos.parent / "stats" / "maps.csv"
    code, output = attnviz(
        "run", photos, "--model", "lite0-cbam", "--out", out, "--layer", "all", "--stats", table
    )
    assert code == 0, output
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 3 * 4
    assert {r["layer"] for r in rows} == {
        f"attention.{n}" for n in ("block4", "block10", "block15", "head")
    }
    by_input = records(out)
    for row in rows:
        stats = by_input[Path(row["input"]).name]["maps"][row["layer"]]
        assert float(row["entropy"]) == pytest.approx(stats["entropy"])
        assert float(row["mass_top10"]) == pytest.approx(stats["mass_top10"])
        assert 0.0 <= float(row["entropy"]) <= 1.0
    # Up-to-date photos are in the table of a rerun too: it describes the run's inputs.
    table.unlink()
    assert (
        attnviz(
            "run", photos, "--model", "lite0-cbam", "--out", out, "--layer", "all", "--stats", table
        )[0]
        == 0
    )
    assert len(list(csv.DictReader(table.open()))) == 12


def test_layer_all_stacks_rows_in_the_networks_order_as_layers_and_the_manifest_list_them() -> None:
    from attnviz.engine.figures import render_figure
    from attnviz.engine.options import RunOptions
    from attnviz.engine.runner import ImageResult
    from attnviz.render import render_triptych

    rng = np.random.default_rng(0)
    fine, mid, coarse = (
        LayerMaps(name, rng.uniform(0, 1, (n, n)), rng.uniform(0, 1, (n, n)))
        for name, n in (("fine", 28), ("mid", 14), ("coarse", 7))
    )
    image = np.full((60, 80, 3), 100, np.uint8)
    result = ImageResult(top5=[], layers=[fine, mid, coarse])
    drawn = render_figure(image, result, RunOptions(inputs=[], layer="all", panel_height=64))
    expected = render_triptych(image, [fine, mid, coarse], panel_height=64)
    assert np.array_equal(drawn, expected)


def test_norm_fixed_applies_to_grad_cam_of_a_user_model(tmp_path: Path) -> None:
    """A model that names no Grad-CAM layer still gets the fixed range on its Grad-CAM map."""
    source = tmp_path / "my_model.py"
    source.write_text(
        "from tests.toy_models import ToyGated\n\ndef build():\n    return ToyGated()\n"
    )
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", f"{source}:build", "--method", "gradcam",
                           "--norm", "fixed:0,2", "--out", out)  # fmt: skip
    assert code == 0, output
    ranges = records(out)["p.jpg"]["heat_ranges"]
    assert "gradcam:conv2" in ranges, ranges  # the last multi-channel map, not a gate's conv
    assert all(r == [0.0, 2.0] for r in ranges.values()), ranges
