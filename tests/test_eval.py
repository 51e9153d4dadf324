"""attnviz eval and its Grad-CAM baseline, on the real shipped model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnviz.attention import capture_maps
from attnviz.cli import app
from attnviz.engine.gradcam import grad_cam, last_feature_layer, trunk_mode
from attnviz.evaluation.evaluate import evaluate
from attnviz.io import load_rgb
from attnviz.models import load_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def lite0():
    return load_model("lite0-cbam", device="cpu")


def test_gradcam_on_lite0_is_the_relu_of_the_class_activation_map(lite0) -> None:
    """For global average pooling then a linear layer, Grad-CAM = ReLU(CAM) / (H W)."""
    x = lite0.preprocess([load_rgb(p) for p in sorted(EXAMPLES.glob("*.jpg"))[:2]])
    net = lite0.net
    with trunk_mode(net):
        cams, logits = grad_cam(net, x, "_act_head")
        with torch.inference_mode():
            features = net.head_features(net.run_blocks(net.stem(x)))
            cam = net.class_evidence(features, logits.argmax(1))[:, 0]

    torch.testing.assert_close(cams, torch.relu(cam) / 49, rtol=1e-4, atol=1e-6)


def test_the_last_feature_layer_is_found_by_running_the_model(lite0) -> None:
    with trunk_mode(lite0.net):
        assert last_feature_layer(lite0.net, torch.zeros(1, 3, 224, 224)) == "_act_head"


def _boxed_set(folder: Path, count: int = 4) -> Path:
    """Photos of a bright square on a textured background, with the square as the box."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        image = rng.integers(60, 120, (160, 200, 3), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, 120)), int(rng.integers(0, 80))
        image[y0 : y0 + 70, x0 : x0 + 70] = rng.integers(150, 256, 3)
        name = f"photo{i}.png"
        Image.fromarray(image).save(folder / name)
        rows.append([name, 0, 200, 160, x0, y0, x0 + 69, y0 + 69])
    with open(folder / "boxes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "imagenet_idx", "width", "height", "x0", "y0", "x1", "y1"])
        writer.writerows(rows)
    return folder / "boxes.csv"


def test_eval_end_to_end_reports_every_layer_and_both_baselines(tmp_path: Path) -> None:
    boxes = _boxed_set(tmp_path)

    result = CliRunner().invoke(
        app, ["eval", str(tmp_path), "--boxes", str(boxes), "--model", "lite0-cbam", "--json"]
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["photos"] == 4
    assert list(report["maps"]) == [
        "attention.block4",
        "attention.block10",
        "attention.block15",
        "attention.head",
        "combined: product of layers",
        "baseline: centred Gaussian",
        "baseline: Grad-CAM",
    ]
    for scores in report["maps"].values():
        for key in ("pointing", "energy", "maxboxacc_v2", "boxacc@0.3", "boxacc@0.5"):
            assert 0.0 <= scores[key] <= 100.0
    for layer in ("attention.block4", "attention.block10", "attention.block15", "attention.head"):
        scores = report["maps"][layer]
        assert 0.0 <= scores["range_p10"] <= scores["range_median"] <= 1.0
    assert 0.0 <= report["model"]["teacher_agreement"] <= 100.0


def test_eval_table_fits_80_columns_and_a_bad_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 80)
    boxes = _boxed_set(tmp_path, count=1)
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--boxes", str(boxes)])
    assert result.exit_code == 0 and "baseline: Grad-CAM" in result.stdout
    assert "teacher agreement" in result.stdout
    assert "…" not in result.stdout and all(len(line) <= 80 for line in result.stdout.splitlines())
    for header in ("pointing", "energy", "MaxBox", "AccV2", "median", "p10"):
        assert header in result.stdout

    boxes.write_text("file,label\nphoto0.png,zero\n")
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--boxes", str(boxes)])
    assert result.exit_code == 1
    assert "expected file,imagenet_idx,width,height,x0,y0,x1,y1" in result.output


def test_a_photo_the_csv_names_but_the_folder_lacks_is_a_note_not_an_abort(
    tmp_path: Path,
) -> None:
    boxes = _boxed_set(tmp_path, count=2)
    (tmp_path / "photo1.png").unlink()

    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--boxes", str(boxes), "--json"])

    assert result.exit_code == 0, result.output
    assert "1 photo(s) named in" in result.stderr and "photo1.png" in result.stderr
    report = json.loads(result.stdout)
    assert report["photos"] == 1 and report["missing"] == [str(tmp_path / "photo1.png")]

    (tmp_path / "photo0.png").unlink()
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--boxes", str(boxes)])
    assert result.exit_code == 1 and "none of the 2 photos named in" in result.output


def test_each_layer_reports_how_much_its_map_varies_on_the_absolute_scale(tmp_path: Path) -> None:
    boxes = _boxed_set(tmp_path, count=3)
    per_photo = tmp_path / "scores.csv"

    result = CliRunner().invoke(app, [
        "eval", str(tmp_path), "--boxes", str(boxes), "--model", "lite0-cbam",
        "--layer", "attention.head", "--per-photo", str(per_photo), "--json",
    ])  # fmt: skip

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["maps"]
    # The range is read off the map as captured, before any min-max: compute it directly.
    model = load_model("lite0-cbam", device="cpu")
    x = model.preprocess([load_rgb(tmp_path / f"photo{i}.png") for i in range(3)])
    with torch.inference_mode(), capture_maps(model.net, ["attention.head"]) as maps:
        model(x)
    weights = maps["attention.head"].weights[:, 0]
    spans = (weights.amax((1, 2)) - weights.amin((1, 2))).numpy()
    head = report["attention.head"]
    assert head["range_median"] == pytest.approx(float(np.median(spans)), abs=1e-6)
    assert head["range_p10"] == pytest.approx(float(np.percentile(spans, 10)), abs=1e-6)
    assert "range_median" not in report["baseline: Grad-CAM"]  # no absolute scale

    # The CSV holds the photo-level numbers behind the summary: one row per photo and map.
    with open(per_photo, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "map", "pointing", "energy", "box_iou", "min", "max", "range"]
    assert len(rows) == 3 * 3  # the layer and two baselines (no product of one layer)
    for name, scores in report.items():
        mine = [r for r in rows if r["map"] == name]
        assert [r["file"] for r in mine] == ["photo0.png", "photo1.png", "photo2.png"]
        assert 100 * np.mean([int(r["pointing"]) for r in mine]) == pytest.approx(
            scores["pointing"]
        )
        assert np.mean([float(r["energy"]) for r in mine]) == pytest.approx(
            scores["energy"], abs=1e-3
        )
        assert all(0.0 <= float(r["box_iou"]) <= 1.0 for r in mine)
    layer_rows = [r for r in rows if r["map"] == "attention.head"]
    assert [float(r["range"]) for r in layer_rows] == pytest.approx(list(spans), abs=1e-4)
    assert all(r["range"] == "" for r in rows if r["map"].startswith("baseline"))


def test_per_photo_into_a_folder_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    boxes = _boxed_set(tmp_path, count=1)
    result = CliRunner().invoke(app, [
        "eval", str(tmp_path), "--boxes", str(boxes), "--per-photo", str(tmp_path / "no" / "x.csv"),
    ])  # fmt: skip
    assert result.exit_code == 2 and "does not exist" in result.output


def test_per_photo_rows_name_each_photo_as_the_csv_does_absolute_paths_too(
    tmp_path: Path,
) -> None:
    boxes = _boxed_set(tmp_path, count=1)
    rows = boxes.read_text().splitlines()
    absolute = str(tmp_path / "photo0.png")
    boxes.write_text("\n".join([rows[0], rows[1].replace("photo0.png", absolute, 1)]) + "\n")
    per_photo = tmp_path / "scores.csv"

    result = CliRunner().invoke(app, [
        "eval", "relative/folder/ignored", "--boxes", str(boxes), "--layer", "-1",
        "--per-photo", str(per_photo),
    ])  # fmt: skip

    assert result.exit_code == 0, result.output
    with open(per_photo, newline="") as f:
        assert {r["file"] for r in csv.DictReader(f)} == {absolute}


def test_eval_scores_the_very_maps_run_saves(tmp_path: Path) -> None:
    """Eval's forward passes are run's (BatchRunner): a photo's map has the same bytes."""
    boxes = _boxed_set(tmp_path, count=3)
    photos = [str(tmp_path / f"photo{i}.png") for i in range(3)]
    result = evaluate(tmp_path, boxes, "lite0-cbam", "attention.head")
    ran = CliRunner().invoke(app, [
        "run", *photos, "--model", "lite0-cbam", "--layer", "attention.head",
        "--save-raw", "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet",
    ])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    for i in range(3):
        saved = np.load(tmp_path / "out" / f"photo{i}.npz")["attention.head"]
        (row,) = [
            r for r in result.per_photo
            if r["file"] == f"photo{i}.png" and r["map"] == "attention.head"
        ]  # fmt: skip
        assert (row["min"], row["max"]) == (float(saved.min()), float(saved.max()))
