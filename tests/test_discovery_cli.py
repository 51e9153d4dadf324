"""End to end: a user's own attention model, found by discovery, drawn by the real CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import attnviz, write_photo

# The model file imports its neighbour, as research code does: --model puts its folder first
# on sys.path, as `python model.py` would.
NEIGHBOUR = "from tests.lookalikes import *  # noqa: F403\n"
MODEL = """\
import my_blocks as B

def cbam():
    return B.Host(B.CBAMBlock(16))

def sagan():
    return B.Host(B.SelfAttention(16))

def criss_cross():
    return B.Host(B.RecurrentCrissCross(16))

def unet():
    return B.AttentionUNet(3)

def squeeze_excite():
    return B.Host(B.SqueezeExcite(16))

def map_caller():
    return B.MapCallerHost(B.SpatialMapModule())

def inplace_gate():
    return B.Host(B.SpatialGateInPlace())

def sequential_gate():
    return B.Host(B.SpatialGateSequential())

def bam():
    return B.Host(B.BAM(16))

def non_local():
    return B.Host(B.NonLocalBlock(16, sub_sample=True))

def position_attention():
    return B.Host(B.PositionAttention(16))

def coordinate():
    return B.Host(B.CoordinateAttention(16))

def simam():
    return B.Host(B.SimAM())

def triplet():
    return B.Host(B.TripletAttention())

def plain():
    return B.Host(B.nn.Identity())

def viewing_gate():
    return B.Host(B.ViewingGate())

def global_context():
    return B.Host(B.GlobalContext(16))

def discriminator():
    return B.Host(B.SelfAttention(16), classes=1)  # a GAN critic: one score per photo

def hugging_face_vit():
    import transformers

    config = transformers.ViTConfig(image_size=224, patch_size=32, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, num_labels=10)
    return transformers.ViTForImageClassification(config)
"""


@pytest.fixture
def user_model(tmp_path: Path) -> Path:
    folder = tmp_path / "research_code"
    folder.mkdir()
    (folder / "my_blocks.py").write_text(NEIGHBOUR)
    (folder / "model.py").write_text(MODEL)
    return folder / "model.py"


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("factory", "layer"),
    [
        ("cbam", "block.sa"),
        ("map_caller", "block"),
        ("inplace_gate", "block"),
        ("sequential_gate", "block"),
        ("bam", "block"),
        ("sagan", "block"),
        ("non_local", "block"),
        ("position_attention", "block"),
        ("coordinate", "block"),
        ("simam", "block"),
        ("triplet", "block.hw"),
        ("viewing_gate", "block"),  # .view() in user code: photos go in the standard layout
        ("global_context", "block"),
    ],
)
def test_a_users_attention_is_found_and_drawn(
    tmp_path: Path, user_model: Path, factory: str, layer: str
) -> None:
    photo = write_photo(tmp_path / "p.jpg", (120, 90))
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", f"{user_model}:{factory}", "--out", out)
    assert code == 0, output
    record = manifest(out)[0]
    assert record["layers"] == [layer]
    assert len(record["top5"]) == 5 and "top5_note" not in record
    assert Image.open(out / "p.png").width > 2 * Image.open(out / "p.png").height


def test_criss_cross_reads_the_query_point(tmp_path: Path, user_model: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg", (120, 90))
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", f"{user_model}:criss_cross",
                           "--query", "30,60", "--out", out)  # fmt: skip
    assert code == 0, output
    assert manifest(out)[0]["maps"]["block.cca"]["max"] == pytest.approx(1.0)


def test_a_segmentation_host_draws_its_gate_without_classes(
    tmp_path: Path, user_model: Path
) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", f"{user_model}:unet", "--out", out)
    assert code == 0, output
    record = manifest(out)[0]
    assert record["layers"] == ["att"]
    assert record["top5"] == []
    assert "not class scores" in record["top5_note"]
    assert (out / "p.png").is_file()


def test_channel_attention_only_is_said_with_what_to_do(tmp_path: Path, user_model: Path):
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", f"{user_model}:squeeze_excite",
                           "--out", tmp_path / "out")  # fmt: skip
    assert code == 2
    assert "channel attention only (channel gate at block)" in output
    assert "--method gradcam" in output


def test_layers_says_how_each_layer_was_found(
    user_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 200)
    code, output = attnviz("layers", "--model", f"{user_model}:cbam")
    assert code == 0, output
    assert "block.sa (default)" in output and "discovered" in output
    assert "sigmoid gate: the map is its sigmoid gate over positions" in output


def test_a_timm_vision_transformer_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", "timm:vit_tiny_patch16_224",
                           "--random-init", "--layer", "all", "--out", out)  # fmt: skip
    assert code == 0, output
    record = manifest(out)[0]
    assert record["layers"] == [f"blocks.{i}.attn" for i in range(12)]
    assert record["maps"]["blocks.0.attn"]["shape"] == [14, 14]


def test_a_plain_model_is_told_to_use_gradcam(tmp_path: Path, user_model: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", f"{user_model}:plain", "--out", tmp_path / "o")
    assert code == 2
    assert "no spatial attention layers" in output and "--method gradcam" in output


def test_two_model_folders_with_the_same_neighbour_name_each_import_their_own(
    tmp_path: Path,
) -> None:
    from attnviz.models import load_model

    for name, block in (("a", "CBAMBlock(16)"), ("b", "SelfAttention(16)")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "blocks.py").write_text(f"from tests.lookalikes import *  # noqa: F403\n"
                                          f"BLOCK = lambda: {block}\n")  # fmt: skip
        (folder / "model.py").write_text(
            "import blocks\n\ndef build():\n    return blocks.Host(blocks.BLOCK())\n"
        )
    a = load_model(f"{tmp_path / 'a' / 'model.py'}:build", device="cpu")
    b = load_model(f"{tmp_path / 'b' / 'model.py'}:build", device="cpu")
    assert type(a.net.block).__name__ == "CBAMBlock"
    assert type(b.net.block).__name__ == "SelfAttention"
    assert str(tmp_path / "a") not in sys.path and "blocks" not in sys.modules


def test_a_gan_discriminator_is_drawn_without_classes(tmp_path: Path, user_model: Path):
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", f"{user_model}:discriminator", "--out", out)
    assert code == 0, output
    record = manifest(out)[0]
    assert record["layers"] == ["block"] and record["top5"] == []
    assert "1 per photo" in record["top5_note"]


def test_a_hugging_face_model_returning_a_model_output_is_drawn(
    tmp_path: Path, user_model: Path
) -> None:
    pytest.importorskip("transformers")
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", f"{user_model}:hugging_face_vit",
                           "--out", out)  # fmt: skip
    assert code == 0, output
    record = manifest(out)[0]
    assert len(record["layers"]) == 1 and record["maps"][record["layers"][0]]["shape"] == [7, 7]
    assert len(record["top5"]) == 5  # the class scores found in its ModelOutput


def test_layers_never_cuts_a_name_in_an_80_column_terminal(
    user_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 80)
    long = user_model.parent / "deep.py"
    long.write_text(
        "import my_blocks as B\n\n"
        "def build():\n"
        "    host = B.Host(B.nn.Identity())\n"
        "    host.block = B.nn.Sequential()\n"
        "    host.block.add_module('a_rather_long_name_for_a_spatial_attention_gate',\n"
        "                          B.SpatialGateFunctional())\n"
        "    return host\n"
    )
    code, output = attnviz("layers", "--model", f"{long}:build")
    assert code == 0, output
    assert "block.a_rather_long_name_for_a_spatial_attention_gate (default)" in output


FAINT_GATE = """\
import torch
from torch import nn

class FaintGate(nn.Module):
    \"\"\"CBAM's spatial gate with its conv scaled down: sigma(~0), 0.5 nearly everywhere.\"\"\"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)
        with torch.no_grad():
            self.conv.weight.mul_(1e-3)
            self.conv.bias.zero_()

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(pooled))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.gate = FaintGate()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.gate(torch.relu(self.stem(x))).mean((2, 3)))
"""


def test_a_map_that_barely_varies_is_noted_once_so_a_flat_panel_is_not_taken_for_a_bug(
    tmp_path: Path,
) -> None:
    (tmp_path / "faint.py").write_text(FAINT_GATE)
    photos = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg"):
        write_photo(photos / name, (120, 90))
    out = tmp_path / "out"

    code, output = attnviz("run", photos, "--model", f"{tmp_path / 'faint.py'}:Net", "--out", out)

    assert code == 0, output
    assert " ".join(output.split()).count("barely varies") == 1
    records = sorted(manifest(out), key=lambda r: r["input"])
    assert records[0]["maps"]["gate"]["max"] - records[0]["maps"]["gate"]["min"] < 0.05
    assert "barely varies" in records[0]["notes"][0] and "notes" not in records[1]
