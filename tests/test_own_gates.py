"""Your own gates, end to end: what `attnviz train` writes, `run`, `eval`, `compare` and
`layers` load with --weights (the trunk from its package, the file's gates)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from safetensors.torch import load_file

from attnviz.models.registry import LITE0_GATES
from tests.conftest import attnviz, write_photo


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lite0-cbam's gates trained for three steps on generated photos, through the CLI."""
    folder = tmp_path_factory.mktemp("own")
    for i in range(12):
        write_photo(folder / "photos" / f"p{i}.png", size=(80, 64), seed=i)
    out = folder / "my-gates.safetensors"
    code, output = attnviz(
        "train", folder / "photos", "--family", "cbam", "--steps", "3", "--batch-size", "4",
        "--holdout", "4", "--out", out, "--offsets=-4,-3,-4,-4",
    )  # fmt: skip
    assert code == 0, output
    assert out.is_file()
    # The file keeps where each gate's map passes 0.5 (block 10's moved by --offsets).
    state = load_file(str(out))
    assert [float(state[f"attention.{g}.offset"]) for g in LITE0_GATES] == [-4, -3, -4, -4]
    return out


def raw_maps(out: Path, stem: str) -> dict[str, np.ndarray]:
    with np.load(out / f"{stem}.npz") as raw:
        return {k: raw[k] for k in raw.files}


def test_trained_gates_run_and_differ_from_the_shipped_ones(trained: Path, tmp_path: Path):
    photo = write_photo(tmp_path / "p.jpg", (120, 90), seed=5)
    mine, shipped = tmp_path / "mine", tmp_path / "shipped"
    common = ["--model", "lite0-cbam", "--layer", "all", "--save-raw"]
    code, output = attnviz("run", photo, *common, "--weights", trained, "--out", mine)
    assert code == 0, output
    assert attnviz("run", photo, *common, "--out", shipped)[0] == 0
    a, b = raw_maps(mine, "p"), raw_maps(shipped, "p")
    assert a.keys() == b.keys() and len(a) == 4
    assert any(not np.allclose(a[k], b[k]) for k in a)


def test_trained_gates_are_scored_by_eval(trained: Path, tmp_path: Path) -> None:
    images = tmp_path / "boxed"
    rows = ["file,imagenet_idx,width,height,x0,y0,x1,y1"]
    for i in range(3):
        write_photo(images / f"b{i}.png", (96, 96), seed=i)
        rows.append(f"b{i}.png,{i},96,96,20,20,70,70")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("\n".join(rows) + "\n")
    code, output = attnviz("eval", images, "--boxes", boxes, "--model", "lite0-cbam",
                           "--weights", trained, "--device", "cpu", "--json")  # fmt: skip
    assert code == 0, output
    result = json.loads(output)
    assert result["photos"] == 3
    assert {"attention.head", "baseline: Grad-CAM"} <= set(result["maps"])
    # The file is read, not ignored: on another model it is refused.
    code, output = attnviz("eval", images, "--boxes", boxes, "--model", "lite0-psa",
                           "--weights", trained)  # fmt: skip
    assert code == 2 and "gates trained for lite0-cbam" in output


def test_trained_gates_are_compared_with_the_shipped_ones(trained: Path, tmp_path: Path):
    photo = write_photo(tmp_path / "p.jpg", seed=2)
    out = tmp_path / "cmp"
    code, output = attnviz("compare", photo, "--models", f"lite0-cbam,lite0-cbam@{trained}",
                           "--out", out)  # fmt: skip
    assert code == 0, output
    assert (out / "p.compare.png").is_file()


def test_layers_loads_the_weights_it_is_given(trained: Path) -> None:
    code, output = attnviz("layers", "--model", "lite0-cbam", "--weights", trained)
    assert code == 0, output
    assert "attention.head" in output


def test_gates_for_another_model_are_refused_in_one_line(trained: Path, tmp_path: Path):
    photo = write_photo(tmp_path / "p.jpg")
    for command in (
        ["run", photo, "--model", "lite0-psa", "--weights", trained, "--out", tmp_path / "o"],
        ["layers", "--model", "lite0-attnpool", "--weights", trained],
    ):
        code, output = attnviz(*command)
        assert code == 2
        message = output.strip()
        assert "\n" not in message
        assert "gates trained for lite0-cbam (family cbam)" in message
        assert "use --model lite0-cbam" in message


@pytest.mark.slow  # naming the closest built-in builds every built-in model once
def test_another_built_ins_gate_file_is_named_and_exits_2(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from attnviz.models.registry import pretrained_file

    photo = write_photo(tmp_path / "p.jpg")
    # Without the metadata that says what it was trained for, as older files were written.
    psa_file = tmp_path / "psa-gates.safetensors"
    save_file(load_file(str(pretrained_file("lite0-psa.safetensors"))), str(psa_file))
    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--weights", psa_file,
                           "--out", tmp_path / "o")  # fmt: skip
    assert code == 2
    assert "closest built-in model: lite0-psa" in output
    # A file that says what it was trained for is named by that.
    cbam_file = pretrained_file("lite0-cbam.safetensors")
    code, output = attnviz("run", photo, "--model", "lite0-psa", "--weights", cbam_file,
                           "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "gates trained for lite0-cbam (family cbam), not lite0-psa" in output


def _commands() -> dict[str, object]:
    from attnviz.cli import app

    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def _options(name: str) -> set[str]:
    command = _commands()[name]
    return {"--help"} | {
        opt
        for p in command.params  # type: ignore[attr-defined]
        for opt in (*p.opts, *p.secondary_opts)
    }


OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_a_help_text_names_exists(name: str, monkeypatch: pytest.MonkeyPatch):
    """Options a command's help names are its own, and `attnviz OTHER --opt` are OTHER's."""
    monkeypatch.setenv("COLUMNS", "400")  # nothing cut or wrapped
    code, output = attnviz(name, "--help")
    assert code == 0, output
    for other, text in re.findall(r"`attnviz ([a-z]+)([^`]*)`", output):
        assert set(OPTION.findall(text)) <= _options(other), f"`attnviz {other}{text}`"
    own = re.sub(r"`attnviz [a-z]+[^`]*`", "", output)
    named = set(OPTION.findall(own))
    assert named <= _options(name), f"attnviz {name} --help names {sorted(named - _options(name))}"
