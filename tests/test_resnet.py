"""attnviz.models.resnet: the CBAM and BAM authors' layouts, their checkpoint format, capture."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from attnviz.attention import attention_layers
from attnviz.attention.capture import capture_maps
from attnviz.errors import AttnvizError
from attnviz.models.resnet import cbam_resnet
from attnviz.models.weights import load_into, read_state_dict

CBAM_KEY = re.compile(
    r"layer[1-4]\.\d+\.cbam\.(ChannelGate\.mlp\.[13]\.(weight|bias)|SpatialGate\.spatial\."
    r"(conv\.weight|bn\.(weight|bias|running_mean|running_var|num_batches_tracked)))"
)


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return cbam_resnet(50).eval()


def _authors_checkpoint(path: Path, state: dict[str, Tensor]) -> Path:
    # The authors' file: a dict around a DataParallel state dict, plus plain training stats.
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 77.6}, path
    )
    return path


def _perturbed(model: nn.Module) -> dict[str, Tensor]:
    # Values no fresh model has, so an equal tensor after loading proves it came from the file;
    # a small affine nudge keeps running_var positive and the forward finite.
    return {
        k: v * 1.01 + 0.001 if v.is_floating_point() else v + 7
        for k, v in model.state_dict().items()
    }


def test_resnet50_key_layout(resnet50: nn.Module) -> None:
    keys = set(resnet50.state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.num_batches_tracked",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer1.0.cbam.ChannelGate.mlp.1.weight",
        "layer1.0.cbam.ChannelGate.mlp.3.bias",
        "layer1.0.cbam.SpatialGate.spatial.conv.weight",
        "layer1.0.cbam.SpatialGate.spatial.bn.num_batches_tracked",
        "layer4.2.cbam.SpatialGate.spatial.bn.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys
    cbam_keys = [k for k in keys if "cbam" in k]
    assert all(CBAM_KEY.fullmatch(k) for k in cbam_keys), [
        k for k in cbam_keys if not CBAM_KEY.fullmatch(k)
    ]
    assert not any(k.endswith("SpatialGate.spatial.conv.bias") for k in keys)
    # Every block carries CBAM: 10 keys each (mlp 4, conv 1, bn 5) across 3 + 4 + 6 + 3 blocks.
    assert len(cbam_keys) == 10 * 16
    blocks = {
        layer: len({k.split(".")[1] for k in keys if k.startswith(f"{layer}.")})
        for layer in ("layer1", "layer2", "layer3", "layer4")
    }
    assert blocks == {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}
    # Only the first block of each stage projects its shortcut.
    assert {k.rsplit(".downsample", 1)[0] for k in keys if ".downsample." in k} == {
        "layer1.0",
        "layer2.0",
        "layer3.0",
        "layer4.0",
    }
    # Stride 2 on the 3x3 conv of the bottleneck, as in the authors' code.
    assert resnet50.layer2[0].conv2.stride == (2, 2)
    assert resnet50.layer2[0].conv1.stride == (1, 1)
    assert resnet50.fc.in_features == 2048


def test_authors_checkpoint_loads_strictly_and_captures(
    resnet50: nn.Module, tmp_path: Path
) -> None:
    state = _perturbed(resnet50)
    path = _authors_checkpoint(tmp_path / "RESNET50_CBAM_new_name_wrap.pth", state)
    model = cbam_resnet(50).eval()
    load_into(model, read_state_dict(path), "cbam-resnet50")
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key

    names = [name for name, _ in attention_layers(model)]
    assert len(names) == 16
    assert names[0] == "layer1.0.cbam"
    assert names[-1] == "layer4.2.cbam"
    with torch.no_grad(), capture_maps(model, "-1") as maps:
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000)
    assert list(maps) == ["layer4.2.cbam"]
    weights = maps["layer4.2.cbam"].weights
    assert weights.shape == (2, 1, 2, 2)
    assert weights.min() >= 0 and weights.max() <= 1


@pytest.mark.parametrize(
    ("drop", "rename"),
    [
        ("layer3.1.cbam.SpatialGate.spatial.bn.running_var", None),
        ("layer2.0.cbam.ChannelGate.mlp.1.weight", "layer2.0.cbam.ChannelGate.fc1.weight"),
    ],
)
def test_checkpoint_missing_key_is_named(
    resnet50: nn.Module, tmp_path: Path, drop: str, rename: str | None
) -> None:
    state = dict(resnet50.state_dict())
    value = state.pop(drop)
    if rename is not None:
        state[rename] = value
    path = _authors_checkpoint(tmp_path / "broken.pth", state)
    with pytest.raises(AttnvizError, match=re.escape(drop)):
        load_into(cbam_resnet(50), read_state_dict(path), "broken.pth")


def test_resnet18_forward_and_layers() -> None:
    model = cbam_resnet(18, num_classes=10).eval()
    names = [name for name, _ in attention_layers(model)]
    assert names == [f"layer{s}.{b}.cbam" for s in range(1, 5) for b in range(2)]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_capture_leaves_no_hooks() -> None:
    model = cbam_resnet(18).eval()
    with torch.no_grad(), capture_maps(model, "all") as maps:
        assert _hook_count(model) == 8
        model(torch.randn(1, 3, 64, 64))
    assert len(maps) == 8
    assert _hook_count(model) == 0

    with pytest.raises(RuntimeError, match="boom"), capture_maps(model, "all"):
        assert _hook_count(model) == 8
        raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_unknown_depth_is_refused() -> None:
    with pytest.raises(AttnvizError, match="depth 42"):
        cbam_resnet(42)
