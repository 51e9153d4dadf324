"""Usage errors come first: before torch or numpy loads, before the model, before any file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import attnviz, write_photo

PROBE = """
import sys
from attnviz.cli import main
sys.argv = ["attnviz", *{args!r}]
try:
    main()
except SystemExit as exit:
    print(exit.code, *(m in sys.modules for m in ("torch", "numpy", "cv2")))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["run", "examples/chelsae.jpg"],
        ["run", "examples/coffee.jpg", "--cmap", "jte"],
        ["run", "examples/coffee.jpg", "--panels", "original,mpa"],
        ["run", "examples/coffee.jpg", "--query", "10,x"],
        ["run", "examples/coffee.jpg", "--weights", "no-such.safetensors"],
        ["eval", "examples", "--boxes", "boxes.csv", "--per-photo", "no/such/scores.csv"],
    ],
)
def test_a_usage_error_exits_2_before_torch_numpy_or_opencv_loads(args: list[str], tmp_path: Path):
    root = Path(__file__).resolve().parents[1]
    out_flag = ["--out", str(tmp_path / "out")] if args[0] == "run" else []
    code = PROBE.format(args=[*args, *out_flag])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.stdout.split() == ["2", "False", "False", "False"], out.stderr
    assert not (tmp_path / "out").exists()


def test_a_mistyped_single_input_offers_the_close_names_and_creates_nothing(tmp_path: Path):
    write_photo(tmp_path / "chelsea.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", tmp_path / "chelsae.jpg", "--out", out)
    assert code == 2
    assert "no such file or folder" in output and "did you mean" in output
    assert "chelsea.jpg" in output
    assert not out.exists()


def test_with_several_inputs_a_missing_one_is_one_failed_line(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "a.jpg")
    code, output = attnviz("run", photo, tmp_path / "missing.jpg", "--out", tmp_path / "out")
    assert code == 1
    assert (tmp_path / "out" / "a.png").is_file()


def test_the_channels_panel_is_accepted_and_a_typo_gets_a_close_match(tmp_path: Path):
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--panels",
                           "original,map,channels", "--out", tmp_path / "o")  # fmt: skip
    assert code == 0, output
    code, output = attnviz("run", photo, "--panels", "original,mpa", "--out", tmp_path / "o2")
    assert code == 2 and "did you mean map?" in output and "channels" in output


def test_a_text_file_given_as_weights_is_called_what_it_is(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    notes = tmp_path / "README.md"
    notes.write_text("# my model\n")
    code, output = attnviz("run", photo, "--weights", notes, "--out", tmp_path / "o")
    assert code == 2
    assert "not a weights file" in output and "more than tensors" not in output


def test_a_typo_of_gradcam_in_compare_is_matched(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("compare", photo, "--models", "lite0-cbam,gradcm",
                           "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "did you mean gradcam?" in output


def test_query_on_a_model_without_query_maps_says_so_plainly(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--query", "10,10",
                           "--out", tmp_path / "o")  # fmt: skip
    assert code == 2
    assert "shows no point's attention" in output and "reads_query_point" not in output


def test_the_run_summary_says_where_the_gallery_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 300)
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--gallery", "--out", out)
    assert code == 0, output
    assert str(out / "index.html") in output


def test_separate_panels_with_channel_weights_write_the_channels_key(tmp_path: Path):
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", "cbam-resnet18", "--random-init",
                           "--panels", "original,map,channels", "--layout", "separate",
                           "--out", out)  # fmt: skip
    assert code == 0, output
    assert (out / "p.channels.png").is_file() and (out / "p.channels-key.png").is_file()


def test_channels_alone_is_refused(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--panels", "channels", "--out", tmp_path / "o")
    assert code == 2 and "add another panel" in output
    assert not (tmp_path / "o").exists()


def test_a_lone_broken_link_is_a_failed_input_not_a_typo(tmp_path: Path) -> None:
    link = tmp_path / "broken.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    code, output = attnviz("run", link, "--out", tmp_path / "o")
    assert code == 1 and "broken symlink" in output


def test_a_mistyped_folder_is_matched_as_a_folder(tmp_path: Path) -> None:
    write_photo(tmp_path / "photos" / "cat.jpg")
    code, output = attnviz("run", tmp_path / "photoz" / "cat.jpg", "--out", tmp_path / "o")
    assert code == 2 and "did you mean" in output and "photos" in output
