"""BAM: the module's definition, the BAM authors' ResNet layout and checkpoint, capture, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention import attention_layers
from attnviz.attention.capture import capture_maps
from attnviz.models.bam import BAM
from attnviz.models.resnet import bam_resnet
from attnviz.models.weights import load_into, read_state_dict
from tests.conftest import attnviz, write_photo

# The key layout the issue documents for the BAM authors' ImageNet ResNet-50 checkpoint.
BAM_KEY = re.compile(
    r"bam[123]\.("
    r"channel_att\.gate_c\.(gate_c_fc_0|gate_c_fc_final)\.(weight|bias)"
    r"|channel_att\.gate_c\.gate_c_bn_1\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|spatial_att\.gate_s\.(gate_s_conv_reduce0|gate_s_conv_di_[01]|gate_s_conv_final)\.(weight|bias)"
    r"|spatial_att\.gate_s\.(gate_s_bn_reduce0|gate_s_bn_di_[01])\."
    r"(weight|bias|running_mean|running_var|num_batches_tracked))"
)


def _perturbed(model: nn.Module, seed: int = 0) -> dict[str, Tensor]:
    """Values no fresh model has (BatchNorm statistics too), with positive variances."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value + 7
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            state[key] = value + 0.1 * torch.randn(value.shape, generator=generator)
    return state


def _authors_checkpoint(path: Path, state: dict[str, Tensor]) -> Path:
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}, path)
    return path


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return bam_resnet(50).eval()


def test_bam_resnet50_key_layout(resnet50: nn.Module) -> None:
    shapes = {k: tuple(v.shape) for k, v in resnet50.state_dict().items()}
    bam_keys = [k for k in shapes if k.startswith("bam")]
    assert all(BAM_KEY.fullmatch(k) for k in bam_keys), [
        k for k in bam_keys if not BAM_KEY.fullmatch(k)
    ]
    # 9 channel-branch and 23 spatial-branch tensors in each of bam1, bam2, bam3.
    assert len(bam_keys) == 3 * 32
    assert not any("cbam" in k for k in shapes)  # no per-block attention in the BAM layout
    # After layer1, layer2, layer3 of ResNet-50: 256, 512 and 1024 channels, reduction 16.
    for k, channels in (("bam1", 256), ("bam2", 512), ("bam3", 1024)):
        hidden = channels // 16
        assert shapes[f"{k}.channel_att.gate_c.gate_c_fc_0.weight"] == (hidden, channels)
        assert shapes[f"{k}.channel_att.gate_c.gate_c_fc_final.weight"] == (channels, hidden)
        assert shapes[f"{k}.spatial_att.gate_s.gate_s_conv_reduce0.weight"] == (
            hidden, channels, 1, 1,
        )  # fmt: skip
        assert shapes[f"{k}.spatial_att.gate_s.gate_s_conv_di_1.weight"] == (hidden, hidden, 3, 3)
        assert shapes[f"{k}.spatial_att.gate_s.gate_s_conv_final.weight"] == (1, hidden, 1, 1)
    assert "layer4.2.conv3.weight" in shapes and shapes["fc.weight"] == (1000, 2048)


def test_bam_is_its_published_definition() -> None:
    """(1 + sigmoid(c * s)) * F, with s through 1x1, two 3x3 convs at dilation 4, 1x1."""
    bam = BAM(64).eval()
    bam.load_state_dict(_perturbed(bam))
    x = torch.randn(2, 64, 9, 11)

    def bn(t: Tensor, m: nn.Module) -> Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, eps=m.eps)

    c, s = bam.channel_att.gate_c, bam.spatial_att.gate_s
    hidden = F.relu(bn(F.linear(x.mean((2, 3)), c.gate_c_fc_0.weight, c.gate_c_fc_0.bias),
                       c.gate_c_bn_1))  # fmt: skip
    channel = F.linear(hidden, c.gate_c_fc_final.weight, c.gate_c_fc_final.bias)[:, :, None, None]
    y = F.relu(bn(F.conv2d(x, s.gate_s_conv_reduce0.weight, s.gate_s_conv_reduce0.bias),
                  s.gate_s_bn_reduce0))  # fmt: skip
    for i in range(2):
        conv = getattr(s, f"gate_s_conv_di_{i}")
        y = F.relu(bn(F.conv2d(y, conv.weight, conv.bias, padding=4, dilation=4),
                      getattr(s, f"gate_s_bn_di_{i}")))  # fmt: skip
    spatial = F.conv2d(y, s.gate_s_conv_final.weight, s.gate_s_conv_final.bias)

    with torch.no_grad(), capture_maps(nn.Sequential(bam), "all") as maps:
        out = bam(x)
    torch.testing.assert_close(out, (1 + torch.sigmoid(channel * spatial)) * x)
    capture = maps["0"]
    torch.testing.assert_close(capture.weights, torch.sigmoid(spatial))
    torch.testing.assert_close(capture.weighted, out.abs().mean(1, keepdim=True))


def test_authors_checkpoint_loads_strictly_and_captures(
    resnet50: nn.Module, tmp_path: Path
) -> None:
    state = _perturbed(resnet50)
    path = _authors_checkpoint(tmp_path / "RESNET50_IMAGENET_BAM_best.pth.tar", state)
    model = bam_resnet(50).eval()
    load_into(model, read_state_dict(path), "bam-resnet50")
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    assert [name for name, _ in attention_layers(model)] == ["bam1", "bam2", "bam3"]
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    with torch.no_grad(), capture_maps(model, "all") as maps:
        logits = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    # Stages 1-3 of a ResNet at 64 px: 16x16, 8x8, 4x4.
    assert {k: tuple(v.weights.shape) for k, v in maps.items()} == {
        "bam1": (2, 1, 16, 16), "bam2": (2, 1, 8, 8), "bam3": (2, 1, 4, 4),
    }  # fmt: skip
    for capture in maps.values():
        assert capture.weights.min() >= 0 and capture.weights.max() <= 1
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before


def test_cli_runs_a_bam_checkpoint_and_refuses_without_one(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg", (96, 80))
    code, output = attnviz("run", photo, "--model", "bam-resnet18", "--out", tmp_path / "o")
    assert code == 2 and "--weights" in output

    weights = _authors_checkpoint(tmp_path / "bam18.pth", _perturbed(bam_resnet(18)))
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", "bam-resnet18", "--weights", weights,
                           "--layer", "all", "--out", out)  # fmt: skip
    assert code == 0, output
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert record["layers"] == ["bam1", "bam2", "bam3"]
    assert (out / "p.png").is_file()
