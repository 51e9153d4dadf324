"""timm's spatial attention through adapters, and --model timm:NAME (no weights, no network).

Every map is checked against its definition computed here by hand, and against what the
module really applied where the module applies it (its output)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from attnviz.attention import attention_layers, capture_maps, capturer_for
from attnviz.attention.protocol import query_points
from attnviz.errors import UsageError
from tests.conftest import attnviz, write_photo
from tests.test_user_models import randomised
from tests.toy_models import hook_count

timm = pytest.importorskip("timm")
from timm.layers.cbam import CbamModule, LightCbamModule, LightSpatialAttn, SpatialAttn  # noqa: E402
from timm.layers.global_context import GlobalContext  # noqa: E402
from timm.layers.non_local_attn import NonLocalAttn  # noqa: E402


def capture_of(module: nn.Module, x: Tensor) -> tuple[object, Tensor]:
    """(the capture of ``module`` alone, its output) for input ``x``."""
    net = nn.Sequential(module).eval()
    with torch.no_grad(), capture_maps(net, "0") as maps:
        out = net(x)
    assert hook_count(net) == 0
    return maps["0"], out


def conv_bn(conv_norm: nn.Module, x: Tensor) -> Tensor:
    """timm's ConvNormAct (no activation) in eval mode, by hand."""
    conv, bn = conv_norm.conv, conv_norm.bn
    y = F.conv2d(x, conv.weight, conv.bias, padding=conv.kernel_size[0] // 2)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (y - bn.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bn.bias.view(
        1, -1, 1, 1
    )


def mean_abs(t: Tensor) -> Tensor:
    return t.abs().mean(1, keepdim=True)


@pytest.mark.parametrize("light", [False, True])
def test_timm_spatial_attn_map_is_its_definition(light: bool) -> None:
    torch.manual_seed(0)
    module = randomised(LightSpatialAttn(7) if light else SpatialAttn(7))
    x = torch.randn(2, 6, 9, 11)
    capture, out = capture_of(module, x)
    avg, mx = x.mean(1, keepdim=True), x.amax(1, keepdim=True)
    pooled = 0.5 * avg + 0.5 * mx if light else torch.cat([avg, mx], 1)
    expected = torch.sigmoid(conv_bn(module.conv, pooled))
    torch.testing.assert_close(capture.weights, expected)
    torch.testing.assert_close(capture.weighted, mean_abs(expected * x))
    torch.testing.assert_close(out, x * capture.weights)  # the map the module applied
    assert capture.weights.std() > 0.02


@pytest.mark.parametrize("cls", [CbamModule, LightCbamModule])
def test_timm_cbam_module_gives_its_spatial_map_and_channel_weights(cls: type) -> None:
    torch.manual_seed(0)
    module = randomised(cls(16, rd_ratio=1 / 4))
    x = torch.randn(2, 16, 8, 8)
    capture, out = capture_of(module, x)
    ch = module.channel

    def mlp(v: Tensor) -> Tensor:
        return ch.fc2(torch.relu(ch.fc1(v)))

    avg, mx = x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    light = cls is LightCbamModule
    channels = torch.sigmoid(mlp(0.5 * avg + 0.5 * mx) if light else mlp(avg) + mlp(mx))
    gated = x * channels
    a, m = gated.mean(1, keepdim=True), gated.amax(1, keepdim=True)
    weights = torch.sigmoid(conv_bn(module.spatial.conv, 0.5 * a + 0.5 * m if light else
                                    torch.cat([a, m], 1)))  # fmt: skip
    torch.testing.assert_close(capture.channels, channels.flatten(1))
    torch.testing.assert_close(capture.weights, weights)
    torch.testing.assert_close(capture.weighted, mean_abs(weights * gated))
    torch.testing.assert_close(out, gated * weights)


def test_a_cbam_module_is_one_layer_not_two() -> None:
    net = timm.create_model("resnet18", pretrained=False, block_args={"attn_layer": "cbam"})
    layers = [(n, capturer_for(m)) for n, m in attention_layers(net)]
    assert [n for n, _ in layers][:2] == ["layer1.0.se", "layer1.1.se"] and len(layers) == 8
    assert all(c.family == "cbam" and c.found_by == "adapter" for _, c in layers)


@pytest.mark.parametrize("fuse", ["scale", "add"])
def test_timm_global_context_map_is_the_softmax_over_positions_over_its_max(fuse: str) -> None:
    torch.manual_seed(0)
    module = GlobalContext(12, fuse_add=fuse == "add", fuse_scale=fuse == "scale").eval()
    x = torch.randn(2, 12, 5, 7)
    capture, out = capture_of(module, x)
    logits = F.conv2d(x, module.conv_attn.weight, module.conv_attn.bias).flatten(1)
    attention = torch.softmax(logits, dim=1).reshape(2, 1, 5, 7)
    weights = attention / attention.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(capture.weights, weights)
    torch.testing.assert_close(capture.weighted, mean_abs(weights * x))
    assert capture.weights.amax() == pytest.approx(1.0) and capture.weights.std() > 0.05
    if fuse == "scale":  # the channel gate fed by the context: what the block multiplied by
        torch.testing.assert_close(out, x * capture.channels[:, :, None, None])
    else:
        assert capture.channels is None


def test_global_context_without_attention_is_not_a_layer() -> None:
    assert attention_layers(nn.Sequential(GlobalContext(8, use_attn=False))) == []
    assert len(attention_layers(nn.Sequential(GlobalContext(8)))) == 1


def one_hot_non_local() -> NonLocalAttn:
    """theta = phi = identity on 8 channels, so attention logits are x_q . x_k / sqrt(8)."""
    block = NonLocalAttn(8, rd_ratio=1, rd_divisor=1).eval()
    with torch.no_grad():
        for conv in (block.t, block.p, block.g):
            conv.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
            conv.bias.zero_()
    return block


def test_non_local_query_row_has_the_known_answer() -> None:
    """Every position holds e0 except the key (1, 2), which holds 30 e0: each query row puts
    all its attention on the key; an empty query (x = 0) attends uniformly."""
    block = one_hot_non_local()
    x = torch.zeros(2, 8, 4, 5)
    x[:, 0] = 1.0
    x[:, 0, 1, 2] = 30.0
    x[1, :, 3, 4] = 0.0  # image 1: the query cell (3, 4) is empty
    points = torch.tensor([[4.5 / 5, 3.5 / 4], [4.5 / 5, 3.5 / 4]])
    with query_points(points):
        capture, _ = capture_of(block, x)
    key = torch.zeros(1, 1, 4, 5)
    key[0, 0, 1, 2] = 1.0
    torch.testing.assert_close(capture.weights[0:1], key, atol=1e-4, rtol=0)
    torch.testing.assert_close(capture.weights[1:2], torch.ones(1, 1, 4, 5))  # uniform / max
    torch.testing.assert_close(capture.marker, points)
    torch.testing.assert_close(capture.weighted, mean_abs(capture.weights * x))


def test_non_local_default_query_and_mean_received_attention() -> None:
    torch.manual_seed(0)
    block = NonLocalAttn(16, rd_ratio=1 / 2, rd_divisor=1).eval()
    x = torch.randn(1, 16, 6, 6)
    theta, phi = block.t(x).flatten(2), block.p(x).flatten(2)
    attention = torch.softmax(theta.transpose(1, 2) @ phi * 16**-0.5, dim=2).detach()
    received = attention.mean(1).reshape(1, 1, 6, 6)
    received = received / received.amax()

    # timm zero-initialises the BatchNorm: the block adds nothing, so the default query is
    # the position that receives the most attention.
    capture, _ = capture_of(block, x)
    most = int(received.flatten().argmax())
    torch.testing.assert_close(capture.parts["mean received"][0], received)
    torch.testing.assert_close(capture.parts["mean received"][1], mean_abs(received * x))
    torch.testing.assert_close(capture.marker, torch.tensor([[(most % 6 + 0.5) / 6,
                                                              (most // 6 + 0.5) / 6]]))  # fmt: skip
    row = attention[0, most].reshape(1, 1, 6, 6)
    torch.testing.assert_close(capture.weights, row / row.amax())

    # With a trained-looking BatchNorm: the position where the block's term is strongest.
    with torch.no_grad():
        block.norm.weight.normal_()
    capture, out = capture_of(block, x)
    strongest = int((out - x).abs().mean(1).flatten().argmax())
    assert strongest != most  # the two rules differ here, so the test tells them apart
    row = attention[0, strongest].reshape(1, 1, 6, 6)
    torch.testing.assert_close(capture.weights, row / row.amax())


def test_query_points_may_cover_part_of_a_padded_batch() -> None:
    block = one_hot_non_local()
    x = torch.randn(3, 8, 4, 4)
    with query_points(torch.tensor([[0.0, 0.0]])):
        capture, _ = capture_of(block, x)
    default, _ = capture_of(block, x)
    torch.testing.assert_close(capture.marker[0], torch.tensor([0.125, 0.125]))
    torch.testing.assert_close(capture.marker[1:], default.marker[1:])


# -- --model timm:NAME -------------------------------------------------------------------


def test_timm_model_spec_uses_its_pretrained_cfg_and_needs_weights() -> None:
    from attnviz.models.registry import get_spec

    spec = get_spec("timm:gcresnet33ts")
    assert (spec.input_size, spec.mean, spec.std) == (256, (0.485, 0.456, 0.406),
                                                      (0.229, 0.224, 0.225))  # fmt: skip
    vit = get_spec("timm:vit_tiny_patch16_224")
    assert vit.mean == (0.5, 0.5, 0.5) and vit.fixed_size
    with pytest.raises(UsageError, match="--weights FILE.*--random-init"):
        spec.build(False)
    with pytest.raises(UsageError, match=r"timm has no model 'gcresnet33t'.*gcresnet33ts"):
        get_spec("timm:gcresnet33t")


def test_timm_missing_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnviz.models.registry import get_spec

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(UsageError, match=r"pip install attnviz\[timm\].*uv sync --extra timm"):
        get_spec("timm:resnet18")


def test_cli_timm_model_layers_and_run_with_local_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 200)
    torch.manual_seed(0)
    net = timm.create_model("gcresnet33ts", pretrained=False)
    blocks = [n for n, m in net.named_modules() if isinstance(m, GlobalContext)]
    code, output = attnviz("layers", "--model", "timm:gcresnet33ts", "--size", "64")
    assert code == 0, output
    rows = [line for line in output.splitlines() if "global-context" in line]
    assert len(rows) == len(blocks) > 0 and all("adapter" in r for r in rows)
    assert all(f" {name} " in row for name, row in zip(blocks, rows, strict=True))

    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", "timm:gcresnet33ts", "--out", tmp_path / "o")
    assert code == 2 and "--weights" in output

    weights = tmp_path / "gc.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in net.state_dict().items()}, weights)
    out = tmp_path / "out"
    model = "timm:gcresnet33ts"
    code, output = attnviz("run", photo, "--model", model, "--weights", weights, "--size", "64",
                           "--layer", "all", "--save-raw", "--out", out)  # fmt: skip
    assert code == 0, output
    raw = np.load(out / "p.npz")
    assert set(raw.files) == set(blocks), raw.files
