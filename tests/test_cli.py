"""End to end: the real CLI, the shipped model, photos written by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnviz.render.triptych import GUTTER
from tests.conftest import attnviz, write_photo


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_one_photo_gives_one_triptych(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "photo.jpg", (120, 80))
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--out", out)
    assert code == 0, output
    figure = Image.open(out / "photo.png")
    assert figure.mode == "RGB" and figure.width > 3 * figure.height / 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "photo.png"]


def test_folder_tree_is_mirrored_and_glob_filters(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    write_photo(src / "a.jpg", seed=1)
    write_photo(src / "cats" / "b.png", seed=2)
    write_photo(src / "cats" / "deep" / "c.jpg", seed=3)
    out = tmp_path / "out"
    code, output = attnviz("run", src, "--out", out, "--batch-size", "2")
    assert code == 0, output
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == {
        "a.png",
        "cats/b.png",
        "cats/deep/c.png",
    }
    out2 = tmp_path / "out2"
    assert attnviz("run", src, "--out", out2, "--glob", "*.jpg")[0] == 0
    assert {p.relative_to(out2).as_posix() for p in out2.rglob("*.png")} == {
        "a.png",
        "cats/deep/c.png",
    }


def test_several_inputs_at_once(tmp_path: Path) -> None:
    a = write_photo(tmp_path / "a.jpg", seed=1)
    b = write_photo(tmp_path / "b.png", seed=2)
    folder = tmp_path / "more"
    write_photo(folder / "c.jpg", seed=3)
    out = tmp_path / "out"
    code, output = attnviz("run", a, b, folder, "--out", out)
    assert code == 0, output
    assert len(manifest(out)) == 3
    assert {p.name for p in out.glob("*.png")} == {"a.png", "b.png", "c.png"}


def test_layer_all_stacks_one_row_per_layer(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg", (100, 100))
    code, _ = attnviz("run", photo, "--model", "lite0-cbam", "--out", tmp_path / "one",
                      "--panel-height", "100")  # fmt: skip
    assert code == 0
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--out", tmp_path / "all",
                           "--layer", "all", "--panel-height", "100")  # fmt: skip
    assert code == 0, output
    one = Image.open(tmp_path / "one" / "p.png")
    every = Image.open(tmp_path / "all" / "p.png")
    # The photo once on a line of its own, then each layer's map and weighted features.
    photo_panel = 100 + GUTTER  # a square photo's panel at --panel-height 100, and its gutter
    assert every.width == one.width - photo_panel
    assert every.height == 5 * one.height + 4 * GUTTER
    assert manifest(tmp_path / "all")[0]["layers"] == [
        "attention.block4",
        "attention.block10",
        "attention.block15",
        "attention.head",
    ]


def test_grid_squares_each_layers_own_panels(tmp_path: Path) -> None:
    """--layout grid with several layers: the photo and Grad-CAM on a line of their own, then
    each layer's three panels wrapped two a line (⌈√3⌉, not ⌈√5⌉), so two lines a layer."""
    photo = write_photo(tmp_path / "p.jpg", (100, 100))
    code, _ = attnviz("run", photo, "--model", "lite0-cbam", "--out", tmp_path / "one",
                      "--panel-height", "100")  # fmt: skip
    assert code == 0
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--out", tmp_path / "grid",
                           "--layer", "all", "--panel-height", "100", "--layout", "grid",
                           "--panels", "original,map,weighted,gradcam,contours")  # fmt: skip
    assert code == 0, output
    line = Image.open(tmp_path / "one" / "p.png").height
    assert Image.open(tmp_path / "grid" / "p.png").height == 9 * line + 8 * GUTTER


def test_colormap_changes_the_colours_and_a_bad_name_lists_valid_ones(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    attnviz("run", photo, "--out", tmp_path / "jet", "--cmap", "jet")
    attnviz("run", photo, "--out", tmp_path / "vir", "--cmap", "viridis")
    jet = np.asarray(Image.open(tmp_path / "jet" / "p.png"))
    vir = np.asarray(Image.open(tmp_path / "vir" / "p.png"))
    assert jet.shape == vir.shape and not np.array_equal(jet, vir)
    code, output = attnviz("run", photo, "--out", tmp_path / "bad", "--cmap", "virdis")
    assert code == 2
    assert "viridis" in output and "turbo" in output
    assert not (tmp_path / "bad").exists()


def test_save_raw_contract(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg", (160, 120))
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--out", out, "--layer", "all",
                           "--save-raw")  # fmt: skip
    assert code == 0, output
    raw = np.load(out / "p.npz")
    assert sorted(raw.files) == [
        "attention.block10",
        "attention.block15",
        "attention.block4",
        "attention.head",
    ]
    assert raw["attention.block4"].shape == (28, 28)  # stride 8 at the default 224 input
    assert raw["attention.block10"].shape == (14, 14)
    assert raw["attention.head"].shape == (7, 7)
    for key in raw.files:
        assert raw[key].dtype == np.float32
        assert 0.0 <= raw[key].min() <= raw[key].max() <= 1.0
    (record,) = manifest(out)
    assert record["input"] == str(photo)
    assert record["outputs"] == {"figure": "p.png", "raw": "p.npz"}
    assert record["layers"] == raw.files or set(record["layers"]) == set(raw.files)
    assert len(record["top5"]) == 5
    assert {"index", "label", "prob"} <= set(record["top5"][0])
    probs = [c["prob"] for c in record["top5"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    stats = record["maps"]["attention.head"]
    assert stats["shape"] == [7, 7]
    assert stats["min"] <= stats["mean"] <= stats["max"]


@pytest.mark.parametrize(
    ("fmt", "magic"), [("png", b"\x89PNG"), ("jpg", b"\xff\xd8"), ("webp", b"RIFF")]
)
def test_output_formats(tmp_path: Path, fmt: str, magic: bytes) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--out", tmp_path / "out", "--format", fmt)
    assert code == 0, output
    assert (tmp_path / "out" / f"p.{fmt}").read_bytes().startswith(magic)


def test_bad_inputs_are_reported_and_the_rest_is_processed(tmp_path: Path) -> None:
    good = write_photo(tmp_path / "good.jpg")
    fake = tmp_path / "fake.jpg"
    fake.write_text("<html>not an image</html>")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(write_photo(tmp_path / "whole.png").read_bytes()[:200])
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    code, output = attnviz("run", good, fake, truncated, missing, "--out", out)
    assert code == 1
    assert (out / "good.png").is_file()
    assert not (out / "fake.png").exists() and not (out / "cut.png").exists()
    for name in ("fake.jpg", "cut.png", "missing.jpg"):
        assert sum(name in line for line in output.splitlines() if "failed:" in line) == 1
    assert not list(out.rglob("*.tmp"))
    records = manifest(out)
    assert len(records) == 4 and sum("error" in r for r in records) == 3


def test_usage_errors_exit_2_and_list_the_choices(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", "lite0-cbm", "--out", tmp_path / "o")
    assert code == 2 and "did you mean lite0-cbam" in output  # lite0-bam is close too
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--layer", "attention.haed",
                           "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "did you mean attention.head" in output
    assert attnviz("run", photo, "--format", "gif", "--out", tmp_path / "o")[0] == 2
    assert attnviz("run", photo, "--no-such-flag")[0] == 2
    assert attnviz("run", photo, "--max-pixels", "0")[0] == 2


def test_a_usage_error_on_a_rerun_leaves_the_earlier_results_and_manifest_alone(
    tmp_path: Path,
) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    assert attnviz("run", photo, "--out", out)[0] == 0

    assert attnviz("run", photo, "--out", out, "--model", "lite0-cbm")[0] == 2
    assert attnviz("run", photo, "--out", out, "--layer", "attention.nope")[0] == 2
    assert attnviz("run", photo, "--out", out, "--panel-height", "0")[0] == 2

    assert [r["input"] for r in manifest(out)] == [str(photo)]
    code, output = attnviz("run", photo, "--out", out)
    assert code == 0 and "up to date │ 1" in output


def test_strict_stops_at_the_first_failure(tmp_path: Path) -> None:
    broken = tmp_path / "a-broken.jpg"
    broken.write_bytes(b"")
    later = write_photo(tmp_path / "b-good.jpg")
    out = tmp_path / "out"

    code, output = attnviz("run", broken, later, "--strict", "--out", out)

    assert code == 1 and "stopped at the first failure (--strict)" in output
    assert not (out / "b-good.png").exists()
    assert [r["input"] for r in manifest(out)] == [str(broken)]


def test_a_user_model_file_runs_with_its_factory(tmp_path: Path) -> None:
    """--model file.py:factory imports the user's file: it runs their code, by design."""
    source = tmp_path / "my_model.py"
    source.write_text(
        "from tests.toy_models import ToyGated\n\ndef build():\n    return ToyGated()\n"
    )
    photo = write_photo(tmp_path / "p.jpg")

    code, output = attnviz("run", photo, "--model", f"{source}:build", "--layer", "all",
                           "--out", tmp_path / "o")  # fmt: skip

    assert code == 0, output
    assert manifest(tmp_path / "o")[0]["layers"] == ["gate1", "gate2"]
    code, output = attnviz("run", photo, "--model", f"{source}:missing", "--out", tmp_path / "o")
    assert code == 2 and "defines no function missing()" in output


def test_cbam_resnet_without_weights_refuses_clearly(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", "cbam-resnet50", "--out", tmp_path / "o")
    assert code == 2 and "--weights" in output


def test_layers_and_models_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 200)  # a wide terminal: no wrapped cells
    code, output = attnviz("layers", "--model", "lite0-cbam")
    assert code == 0
    for text in ("attention.block4", "attention.head (default)", "1×28×28", "1280×7×7"):
        assert text in output
    code, output = attnviz("models")
    assert code == 0
    assert "lite0-cbam" in output and "shipped" in output
    assert "cbam-resnet50" in output and "needs --weights" in output


def test_models_fits_an_80_column_screen_one_line_a_model_with_the_default_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from attnviz import DEFAULT_MODEL
    from attnviz.cli import output as cli
    from attnviz.models.registry import MODELS

    monkeypatch.setattr(cli.out_console, "width", 80)
    code, output = attnviz("models")
    assert code == 0
    lines = output.splitlines()[1:]  # under the header
    assert len(lines) == len(MODELS) + 1 and all(len(line) <= 80 for line in lines)
    for name, line in zip(MODELS, lines, strict=False):
        assert line[2:].split()[0] == name  # whole, so it can be copied into --model
    assert [line.split()[1] for line in lines[:-1] if line.startswith("*")] == [DEFAULT_MODEL]

    code, output = attnviz("models", "lite0-cbam")
    assert code == 0 and MODELS["lite0-cbam"].description in " ".join(output.split())
    code, output = attnviz("models", "lite0-cbm")
    assert code == 2 and "did you mean lite0-cbam" in output


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; sys.argv = ['attnviz', '--help']\n"
        "from attnviz.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "attnviz", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "layers" in result.stdout


def test_method_gradcam_draws_the_trunks_gradcam_once_in_place_of_the_attention(
    tmp_path: Path,
) -> None:
    photo = write_photo(tmp_path / "p.jpg", (120, 80))
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--method", "gradcam",
                           "--save-raw", "--out", tmp_path / "g")  # fmt: skip
    assert code == 0, output
    record = manifest(tmp_path / "g")[0]
    assert record["layers"] == ["gradcam:_act_head"]
    assert record["maps"]["gradcam:_act_head"]["max"] == pytest.approx(1.0)  # scaled by its max
    assert attnviz("run", photo, "--out", tmp_path / "a")[0] == 0
    gradcam_figure = np.asarray(Image.open(tmp_path / "g" / "p.png"))
    attention_figure = np.asarray(Image.open(tmp_path / "a" / "p.png"))
    # The map and weighted panels would be one map twice: the overlay is drawn alone, with
    # its key; asked for by name, the map panel is drawn.
    assert gradcam_figure.shape[0] == attention_figure.shape[0]
    assert gradcam_figure.shape[1] < attention_figure.shape[1]
    code, _ = attnviz("run", photo, "--model", "lite0-cbam", "--method", "gradcam",
                      "--panels", "original,map", "--out", tmp_path / "m")  # fmt: skip
    assert code == 0
    assert Image.open(tmp_path / "m" / "p.png").width == gradcam_figure.shape[1]

    code, output = attnviz(
        "run", photo, "--method", "gradcam", "--layer", "_blocks.99", "--out", tmp_path / "x"
    )
    assert code == 2 and "no module '_blocks.99'" in output
    assert attnviz("run", photo, "--method", "saliency")[0] == 2


def test_outputs_are_byte_identical_whatever_the_batch_size_and_workers(tmp_path: Path) -> None:
    for i in range(6):
        write_photo(tmp_path / "in" / f"p{i}.jpg", (90 + 7 * i, 70), seed=i)
    runs = {"w1-b4": ("1", "4"), "w3-b4": ("3", "4"), "w2-b1": ("2", "1"), "w2-b5": ("2", "5")}
    for name, (workers, batch) in runs.items():
        code, output = attnviz(
            "run", tmp_path / "in", "--workers", workers, "--batch-size", batch, "--save-raw",
            "--layer", "all", "--panels", "original,map,weighted,gradcam", "--out", tmp_path / name,
        )  # fmt: skip
        assert code == 0, output

    reference = sorted((tmp_path / "w1-b4").iterdir())
    for name in runs:
        files = sorted((tmp_path / name).iterdir())
        assert [p.name for p in files] == [p.name for p in reference]
        for a, b in zip(files, reference, strict=True):
            assert a.read_bytes() == b.read_bytes(), (name, a.name)  # figures, maps, manifest


def test_strict_writes_nothing_after_a_failed_write(tmp_path: Path) -> None:
    for name in "abcdef":
        write_photo(tmp_path / "in" / f"{name}.jpg", seed=ord(name))
    out = tmp_path / "out"
    (out / "b.png").mkdir(parents=True)  # b's figure cannot be written

    code, output = attnviz("run", tmp_path / "in", "--strict", "--out", out)

    assert code == 1 and "stopped at the first failure (--strict)" in output
    assert sorted(p.name for p in out.glob("*.png") if p.is_file()) == ["a.png"]
    assert [("error" in r) for r in manifest(out)] == [False, True]


def test_manifest_follows_input_order_whatever_fails_to_decode(tmp_path: Path) -> None:
    for name in "abcde":
        write_photo(tmp_path / "in" / f"{name}.jpg", seed=ord(name))
    (tmp_path / "in" / "c.jpg").write_bytes(b"not a photo")

    code, _ = attnviz("run", tmp_path / "in", "--batch-size", "2", "--out", tmp_path / "o")

    assert code == 1
    assert [Path(r["input"]).name for r in manifest(tmp_path / "o")] == [
        "a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"
    ]  # fmt: skip


def test_gradcam_on_a_layer_without_a_spatial_map_is_a_usage_error(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--method", "gradcam",
                           "--layer", "_fc", "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "(N, C, H, W)" in output


def test_the_pixel_limit_flag_defaults_to_the_decoders_limit() -> None:
    import inspect

    from attnviz.choices import DEFAULT_MAX_PIXELS
    from attnviz.cli.run import run

    assert inspect.signature(run).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS
