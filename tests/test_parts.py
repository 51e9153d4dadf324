"""What a figure shows beyond one map: a layer's parts (--parts), CBAM's channel weights and
the query point of attention read from a point (--query)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnviz.attention import attention_layers, capture_maps
from attnviz.models.cbam import CBAM
from attnviz.render.triptych import LayerMaps, channel_profile, compute_layout, render_triptych
from tests.conftest import attnviz, summary_count, write_photo
from tests.toy_models import hook_count

TOY_POINT = f"{Path(__file__).with_name('toy_models.py')}:toy_point_model"


def test_cbam_is_one_layer_whose_capture_carries_the_channel_weights() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), CBAM(32, reduction=4)).eval()
    assert [n for n, _ in attention_layers(model)] == ["1"]  # the inner SpatialGate is not listed
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad(), capture_maps(model, "all") as maps:
        out = model(x)
    assert hook_count(model) == 0
    capture = maps["1"]

    cbam, f = model[1], model[0](x).detach()
    mlp = cbam.ChannelGate.mlp
    channels = torch.sigmoid(mlp(f.mean((2, 3), keepdim=True)) + mlp(f.amax((2, 3), keepdim=True)))
    gated = f * channels[:, :, None, None]
    pooled = torch.cat([gated.amax(1, keepdim=True), gated.mean(1, keepdim=True)], 1)
    weights = torch.sigmoid(cbam.SpatialGate.spatial(pooled))  # conv + BatchNorm, as the authors
    torch.testing.assert_close(capture.channels, channels)
    torch.testing.assert_close(capture.weights, weights)
    torch.testing.assert_close(out, gated * weights)  # the capture is what the module applied


def test_a_layer_with_channel_weights_gets_a_channel_panel_after_its_map() -> None:
    image = np.full((64, 96, 3), 90, np.uint8)
    spatial = np.linspace(0, 1, 49, dtype=np.float32).reshape(7, 7)
    plain = LayerMaps("x", spatial, spatial)
    gated = LayerMaps("x", spatial, spatial, channels=np.linspace(0, 1, 40, dtype=np.float32))
    layout = compute_layout(image.shape, 128)
    assert render_triptych(image, [plain], panel_height=128).shape[1] == layout.width
    wider = render_triptych(image, [gated], panel_height=128)
    assert wider.shape[1] == layout.width + layout.panel_width + layout.gutter
    assert wider.shape[0] == layout.height(1)  # one line: the extra panel does not wrap


def test_channel_profile_sorts_high_to_low_under_a_strip_in_channel_order() -> None:
    weights = np.array([0.0, 1.0, 0.5, 0.25], np.float32)
    profile = channel_profile(weights, (120, 80), "bone")
    strip = profile[0].astype(int).sum(axis=1)  # bone: brightness grows with the weight
    assert strip[0] < strip[30] and strip[30] > strip[50] > strip[70]  # order 0, 1, .5, .25
    plot = channel_profile(weights, (120, 80), "jet").astype(int)
    coloured = (plot.max(axis=2) - plot.min(axis=2)) > 20  # jet is never grey; paper, grid are
    heights = coloured[30:].sum(axis=0)  # below the strip
    assert heights[5] > heights[25] > heights[45] > heights[75] == 0  # 1, .5, .25, 0
    assert heights[5] >= 2 * heights[25] - 4


def test_the_marker_is_drawn_at_its_point_and_nowhere_else() -> None:
    image = np.full((80, 80, 3), 90, np.uint8)
    flat = np.full((8, 8), 0.5, np.float32)
    plain = render_triptych(image, [LayerMaps("x", flat, flat)], panel_height=80)
    marked = render_triptych(image, [LayerMaps("x", flat, flat, marker=(0.25, 0.75))],
                             panel_height=80)  # fmt: skip
    layout = compute_layout(image.shape, 80)
    y0, x0 = layout.panel_origin(0, 1)  # the map panel
    changed = np.argwhere((plain != marked).any(axis=2))
    inside = changed[(changed[:, 0] >= y0) & (changed[:, 1] >= x0) & (changed[:, 1] < x0 + 80)]
    centre = inside.mean(axis=0) - (y0, x0)
    assert abs(centre[0] - 60) <= 2 and abs(centre[1] - 20) <= 2
    # Besides the map and weighted panels, only the caption changes ("at the ring").
    below_captions = changed[changed[:, 0] >= y0]
    assert (below_captions[:, 1] >= x0).all()


def test_cli_query_reads_the_map_at_that_pixel_and_rejects_points_outside(tmp_path: Path) -> None:
    wide = write_photo(tmp_path / "in" / "wide.png", (96, 64))
    small = write_photo(tmp_path / "in" / "small.png", (40, 30), seed=1)
    out = tmp_path / "out"
    code, output = attnviz("run", tmp_path / "in", "--model", TOY_POINT, "--random-init",
                           "--query", "50,40", "--out", out)  # fmt: skip
    assert code == 1, output
    assert "--query 50,40 lies outside this 40x30 image" in output
    assert summary_count(output, "processed") == 1 and summary_count(output, "failed") == 1
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    record = next(r for r in records if r["input"] == str(wide))
    # 8 x 8 cells of 12 x 8 px: (50, 40) is in cell (4, 5), whose centre is (54, 44).
    assert record["maps"]["1"]["peak_xy"] == [54.0, 44.0]
    assert not (out / f"{small.stem}.png").exists()

    code, output = attnviz("run", wide, "--model", TOY_POINT, "--random-init", "--out", out,
                           "--overwrite")  # fmt: skip
    assert code == 0, output
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert record["maps"]["1"]["peak_xy"] == [54.0, 36.0]  # the module's own query: the centre


def test_cli_parts_add_rows_only_when_asked(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.png")
    for flags, layers in (([], ["1"]), (["--parts"], ["1", "1[flat]"])):
        out = tmp_path / ("parts" if flags else "plain")
        code, output = attnviz("run", photo, "--model", TOY_POINT, "--random-init", "--out", out,
                               *flags)  # fmt: skip
        assert code == 0, output
        record = json.loads((out / "manifest.jsonl").read_text())
        assert record["layers"] == layers
        assert record["maps"][layers[-1]]["max"] <= 1.0


def test_cli_query_must_be_two_pixel_coordinates(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.png")
    for bad in ("12", "a,b", "-1,4", "nan,3"):
        code, output = attnviz("run", photo, "--model", TOY_POINT, "--random-init",
                               "--query", bad, "--out", tmp_path / "o")  # fmt: skip
        assert code == 2, (bad, output)
        assert "--query" in output and "Traceback" not in output
        assert not (tmp_path / "o").exists()


def test_cli_query_is_refused_where_no_chosen_layer_reads_a_query_point(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.png", (96, 64))
    for flags, named in ((["--model", "lite0-cbam"], "attention.head shows no point"),
                         (["--model", "lite0-cbam", "--layer", "all"], "show no point"),
                         (["--method", "gradcam"], "Grad-CAM has none")):  # fmt: skip
        out = tmp_path / "out"
        code, output = attnviz("run", photo, *flags, "--query", "10,10", "--out", out)
        assert code == 2, (flags, output)
        assert "--query" in output and named in output and "Traceback" not in output
        assert not (out / "p.png").exists()
    code, output = attnviz("run", photo, "--model", "lite0-nonlocal", "--query", "10,10",
                           "--out", tmp_path / "nonlocal")  # fmt: skip
    assert code == 0, output


def test_the_non_local_families_and_no_others_read_the_query_point() -> None:
    import attnviz as api
    from attnviz.attention import reads_query

    nonlocal_net = api.load_model("lite0-nonlocal", device="cpu").net
    cbam_net = api.load_model("lite0-cbam", device="cpu").net
    assert reads_query(nonlocal_net, [name for name, _ in attention_layers(nonlocal_net)])
    assert not reads_query(cbam_net, [name for name, _ in attention_layers(cbam_net)])
    non_local_attn = pytest.importorskip("timm.layers.non_local_attn").NonLocalAttn
    timm_net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), non_local_attn(8))
    assert reads_query(timm_net, ["1"]) and not reads_query(timm_net, ["0"])


def test_cli_norm_fixed_reaches_the_parts_rows(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.png")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", "lite0-psa", "--parts", "--norm",
                           "fixed:0,0.5", "--out", out)  # fmt: skip
    assert code == 0, output
    record = json.loads((out / "manifest.jsonl").read_text())
    parts = [n for n in record["layers"] if n.startswith("attention.head[")]
    assert parts == ["attention.head[scale 1]", "attention.head[scale 1/2]",
                     "attention.head[scale 1/4]"]  # fmt: skip
    assert all(record["heat_ranges"][n] == [0.0, 0.5] for n in ["attention.head", *parts])
