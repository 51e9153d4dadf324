"""Any user model: package.module:factory, the CBAM authors' SpatialGate (matched by its
layout, not its import path), and --layer on any module with a one-channel output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention import attention_layers, capture_maps, select_layers
from attnviz.attention.adapters import adapter_for
from attnviz.attention.capture import as_weight_map
from attnviz.errors import UsageError
from tests.conftest import attnviz, write_photo
from tests.toy_models import ToyGated, hook_count

# -- the CBAM authors' layout (MODELS/cbam.py), written here from its description ----------


class BasicConv(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, padding=kernel_size // 2,
                              bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01)
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x


class ChannelPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.max(1)[0].unsqueeze(1), x.mean(1).unsqueeze(1)], dim=1)


class SpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = BasicConv(2, 1, 7, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.spatial(self.compress(x)))  # a function: no module outputs it
        return x * scale


class CBAM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.SpatialGate = SpatialGate()

    def forward(self, x: Tensor) -> Tensor:
        return self.SpatialGate(x)


class AuthorsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.cbam = CBAM()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.cbam(self.conv(x)).mean(dim=(2, 3)))


def randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine weights, so no layer is left at identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 0.02 + 0.01)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
    return net.eval()


def authors_map_by_hand(gate: SpatialGate, x: Tensor) -> Tensor:
    pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
    conv, bn = gate.spatial.conv, gate.spatial.bn
    y = F.conv2d(pooled, conv.weight, padding=3)
    y = (y - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var + bn.eps).view(
        1, -1, 1, 1
    ) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return torch.sigmoid(y)


def test_authors_spatial_gate_is_read_from_its_spatial_child() -> None:
    torch.manual_seed(0)
    net = randomised(AuthorsNet())
    assert [n for n, _ in attention_layers(net)] == ["cbam.SpatialGate"]
    x = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        plain = net(x)
        features = net.conv(x)
        with capture_maps(net, "cbam.SpatialGate") as maps:
            captured = net(x)
    torch.testing.assert_close(captured, plain)
    assert hook_count(net) == 0  # both hooks gone: on the gate and on its spatial child
    gate = net.cbam.SpatialGate
    expected = authors_map_by_hand(gate, features)
    capture = maps["cbam.SpatialGate"]
    torch.testing.assert_close(capture.weights, expected)
    torch.testing.assert_close(capture.weighted, (expected * features).abs().mean(1, keepdim=True))
    torch.testing.assert_close(gate(features), features * capture.weights)  # the map it applied
    assert capture.weights.shape == (2, 1, 10, 12)
    assert capture.weights.std() > 0.02  # random BatchNorm: a map that varies


def test_authors_gate_in_a_user_file_is_listed_as_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 200)
    source = tmp_path / "authors_net.py"
    source.write_text("from tests.test_user_models import AuthorsNet\n\ndef build():\n"
                      "    return AuthorsNet()\n")  # fmt: skip
    code, output = attnviz("layers", "--model", f"{source}:build", "--size", "32")
    assert code == 0, output
    row = next(line for line in output.splitlines() if "cbam.SpatialGate" in line)
    assert "cbam-spatial" in row and "adapter" in row and "1×16×16" in row and "6×16×16" in row
    assert "spatial " not in output.replace("cbam-spatial", "")  # the child is no layer


class NotCbamSpatialGate(nn.Module):
    """A class of the same name whose layout is not the authors' (3 -> 1 convolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = BasicConv(3, 1, 7, relu=False)


class BamSpatialGate(nn.Module):
    """The BAM authors' SpatialGate: same class name, no channel pool."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_s = nn.Sequential(nn.Conv2d(8, 1, 1))


def test_the_structural_match_refuses_look_alikes() -> None:
    NotCbamSpatialGate.__name__ = BamSpatialGate.__name__ = "SpatialGate"
    assert adapter_for(SpatialGate()) is not None
    assert adapter_for(NotCbamSpatialGate()) is None
    assert adapter_for(BamSpatialGate()) is None
    renamed = type("MyGate", (SpatialGate,), {})()
    assert adapter_for(renamed) is None  # the name is part of the match


# -- --layer on any module whose output is a one-channel map -------------------------------


class SaliencyNet(nn.Module):
    """A model with no attention layer: a 1-channel head gives logits, a sigmoid after it
    gives values in [0, 1]; ``wide`` has 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.saliency = nn.Conv2d(8, 1, 3, padding=1)
        self.prob = nn.Sigmoid()
        self.down = nn.Conv2d(8, 1, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.wide(x)
        return (self.prob(self.saliency(f)) * f).mean(dim=(2, 3)) + self.down(f).mean()


def test_a_one_channel_module_is_a_user_selection_with_the_sigmoid_rule() -> None:
    torch.manual_seed(0)
    net = SaliencyNet().eval()
    assert select_layers(net, "saliency,prob,down") == ["saliency", "prob", "down"]
    x = torch.randn(2, 3, 16, 16) * 3
    with torch.no_grad(), capture_maps(net, "saliency,prob,down") as maps:
        net(x)
        f = net.wide(x)
        logits = net.saliency(f)
    assert hook_count(net) == 0
    assert logits.min() < 0 < 1 < logits.max()  # the case the rule is for
    torch.testing.assert_close(maps["saliency"].weights, torch.sigmoid(logits))
    # The module's input has the map's size: weighted is |map ⊗ input| over channels.
    torch.testing.assert_close(
        maps["saliency"].weighted, (torch.sigmoid(logits) * f).abs().mean(1, keepdim=True)
    )
    # Already in [0, 1]: used as it is, no second sigmoid.
    torch.testing.assert_close(maps["prob"].weights, torch.sigmoid(logits))
    # A stride-2 map has no input of its size: the weighted map is the map itself.
    assert maps["down"].weights.shape == (2, 1, 4, 4)
    torch.testing.assert_close(maps["down"].weighted, maps["down"].weights)


def test_the_sigmoid_is_decided_per_image() -> None:
    inside = torch.full((1, 1, 2, 2), 0.25)
    outside = torch.tensor([[[[-1.0, 2.0], [0.5, 0.0]]]])
    both = as_weight_map(torch.cat([inside, outside]))
    torch.testing.assert_close(both[0:1], inside)
    torch.testing.assert_close(both[1:2], torch.sigmoid(outside))


def test_a_module_without_a_one_channel_output_is_a_usage_error_naming_its_shape() -> None:
    net = SaliencyNet().eval()
    with (
        pytest.raises(UsageError, match=r"--layer wide: its output is \(1, 8, 8, 8\)"),
        torch.no_grad(),
        capture_maps(net, "wide"),
    ):
        net(torch.randn(1, 3, 16, 16))
    assert hook_count(net) == 0  # removed after the error too
    with pytest.raises(UsageError, match="did you mean saliency"):
        select_layers(net, "salency")
    with pytest.raises(UsageError, match="no spatial attention layers.*--layer NAME"):
        select_layers(net, "-1")


SALIENCY_FILE = (
    "from tests.test_user_models import SaliencyNet\n\ndef build():\n    return SaliencyNet()\n"
)


def test_cli_lists_and_runs_a_user_selection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 200)
    source = tmp_path / "saliency.py"
    source.write_text(SALIENCY_FILE)
    model = f"{source}:build"
    code, output = attnviz("layers", "--model", model, "--layer", "saliency", "--size", "32")
    assert code == 0, output
    row = next(line for line in output.splitlines() if "saliency" in line and "│" in line)
    assert "user selection" in row and "1×16×16" in row and "8×16×16" in row
    assert row.split("│")[1].strip() == ""  # no index: --layer -1 counts attention layers only

    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", model, "--random-init", "--layer",
                           "saliency", "--out", out, "--size", "32")  # fmt: skip
    assert code == 0, output
    assert (out / "p.png").is_file()
    code, output = attnviz("run", photo, "--model", model, "--random-init", "--layer", "wide",
                           "--out", tmp_path / "o2", "--size", "32")  # fmt: skip
    assert code == 2 and "its output is (1, 8, 16, 16), not a one-channel" in output
    assert not (tmp_path / "o2" / "p.png").exists()
    code, output = attnviz("layers", "--model", model, "--layer", "wide", "--size", "32")
    assert code == 2 and "its output is (1, 8, 16, 16)" in output


# -- --model package.module:factory ---------------------------------------------------------


def test_package_module_factory_is_imported_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "usernets_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "from tests.toy_models import ToyGated\n\ndef build():\n    return ToyGated()\n"
    )
    (package / "broken.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the folder added is undone afterwards
    photo = write_photo(tmp_path / "p.jpg")

    code, output = attnviz("run", photo, "--model", "usernets_pkg.nets:build", "--layer", "all",
                           "--out", tmp_path / "o")  # fmt: skip
    assert code == 0, output
    assert (tmp_path / "o" / "p.png").is_file()
    # --weights works as for every model: a wrapped checkpoint, loaded strictly.
    torch.manual_seed(1)
    state = {f"module.{k}": v for k, v in ToyGated().state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "toy.pth")
    code, output = attnviz("run", photo, "--model", "usernets_pkg.nets:build", "--weights",
                           tmp_path / "toy.pth", "--out", tmp_path / "o3")  # fmt: skip
    assert code == 0, output
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    code, output = attnviz("run", photo, "--model", "usernets_pkg.nets:build", "--weights",
                           tmp_path / "bad.pth", "--out", tmp_path / "o4")  # fmt: skip
    assert code != 0 and "weights do not fit" in output

    code, output = attnviz("run", photo, "--model", "usernets_pkg.nope:build", "--out", "o2")
    assert code == 2 and "no module named usernets_pkg.nope" in output
    code, output = attnviz("run", photo, "--model", "usernets_pkg.nets:nope", "--out", "o2")
    assert code == 2 and "usernets_pkg.nets defines no function nope()" in output
    # A missing import inside the user's module is their error, said as such.
    code, output = attnviz("run", photo, "--model", "usernets_pkg.broken:build", "--out", "o2")
    assert code == 1 and "no_such_dependency_xyz" in output and "importing it raised" in output
