"""Discovery: attention found by what a module computes, in classes attnviz never saw.

Each look-alike (tests/lookalikes.py) is written from its paper's formula the way people
write it; discovery must list exactly its spatial layers, tell channel attention apart, and
read maps that match a hand computation on a tiny case.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention import capture_maps, discover, layer_capturers, select_layers
from attnviz.attention.protocol import query_points
from attnviz.errors import UsageError
from tests import lookalikes as L

SIZE = 32  # the hosts' stem has stride 4: an 8 x 8 grid


def found(model: nn.Module, size: int = SIZE) -> dict[str, str]:
    discovery = discover(model.eval(), torch.randn(2, 3, size, size))
    return {name: recipe.pattern for name, recipe in discovery.layers.items()}


def maps_of(model: nn.Module, x: Tensor, layer: str) -> dict:
    with torch.inference_mode(), capture_maps(model, layer) as captured:
        model(x)
    return captured


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (L.MapCallerHost(L.SpatialMapModule()), {"block": "sigmoid gate"}),
        (L.Host(L.SpatialGateFunctional()), {"block": "sigmoid gate"}),
        (L.Host(L.SpatialGateInPlace()), {"block": "sigmoid gate"}),
        (L.Host(L.SpatialGateSequential()), {"block": "sigmoid gate"}),
        (L.Host(L.CBAMBlock(16)), {"block.sa": "sigmoid gate"}),
        (L.Host(L.BAM(16)), {"block": "sigmoid gate"}),
        (L.AttentionUNet(1), {"att": "sigmoid gate"}),
        (L.AttentionUNet(3), {"att": "sigmoid gate"}),
        (L.Host(L.NonLocalBlock(16)), {"block": "softmax attention"}),
        (L.Host(L.NonLocalBlock(16, sub_sample=True)), {"block": "softmax attention"}),
        (L.Host(L.PositionAttention(16)), {"block": "softmax attention"}),
        (L.Host(L.SelfAttention(16)), {"block": "softmax attention"}),
        (L.Host(L.RecurrentCrissCross(16)), {"block.cca": "criss-cross attention"}),
        (L.Host(L.CoordinateAttention(16)), {"block": "coordinate gate"}),
        (L.Host(L.SimAM()), {"block": "sigmoid gate"}),
        (L.Host(L.TripletAttention()), {"block.hw": "sigmoid gate"}),
        (L.Host(L.TripletAttentionSpelt()), {"block.hw": "sigmoid gate"}),
        (L.Host(L.GlobalContext(16)), {"block": "softmax pooling"}),
        (L.Host(L.ViewingGate()), {"block": "sigmoid gate"}),
        (L.Host(L.SqueezeExcite(16)), {}),
        (L.Host(L.SqueezeExciteLinear(16)), {}),
        (L.Host(L.ECA()), {}),
        (L.Host(L.ChannelAttention()), {}),
    ],
    ids=lambda v: (
        type(v.block).__name__
        if isinstance(v, L.Host)
        else (type(v).__name__ if isinstance(v, nn.Module) else "")
    ),
)
def test_each_pattern_is_found_in_the_layer_that_computes_it(model, expected) -> None:
    assert found(model) == expected


@pytest.mark.parametrize(
    ("block", "what"),
    [
        (L.SqueezeExcite(16), "channel gate"),
        (L.SqueezeExciteLinear(16), "channel gate"),
        (L.ECA(), "channel gate"),
        (L.ChannelAttention(), "channel attention"),
    ],
)
def test_channel_attention_is_reported_not_listed(block: nn.Module, what: str) -> None:
    model = L.Host(block).eval()
    discovery = discover(model, torch.randn(2, 3, SIZE, SIZE))
    assert discovery.layers == {}
    assert discovery.channel_only == (("block", what),)
    with pytest.raises(UsageError, match=f"channel attention only \\({what} at block\\).*gradcam"):
        select_layers(model, "-1")


def test_cbam_block_reports_its_channel_half_and_lists_its_spatial_half() -> None:
    model = L.Host(L.CBAMBlock(16)).eval()
    discovery = discover(model, torch.randn(2, 3, SIZE, SIZE))
    assert list(discovery.layers) == ["block.sa"]
    assert discovery.channel_only == (("block.ca", "channel gate"),)


def test_a_plain_cnn_has_nothing_and_is_told_to_use_gradcam() -> None:
    model = L.Host(nn.Identity()).eval()
    assert found(model) == {}
    with pytest.raises(UsageError, match="no spatial attention layers.*--method gradcam"):
        select_layers(model, "-1")


# ------------------------------------------------------------------ maps by hand


def test_cbam_map_module_map_is_its_sigmoid_and_weighted_is_the_product() -> None:
    torch.manual_seed(0)
    model = L.MapCallerHost(L.SpatialMapModule()).eval()
    found(model)
    x = torch.randn(2, 3, SIZE, SIZE)
    c = maps_of(model, x, "block")["block"]
    f = model.stem(x)
    gate = model.block
    expected = torch.sigmoid(gate.conv(torch.cat([f.mean(1, True), f.amax(1, True)], 1)))
    torch.testing.assert_close(c.weights, expected)
    torch.testing.assert_close(c.weighted, (expected * f).abs().mean(1, keepdim=True))


def test_bam_map_is_the_channel_mean_of_its_three_dimensional_gate() -> None:
    torch.manual_seed(0)
    model = L.Host(L.BAM(16)).eval()
    found(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    c = maps_of(model, x, "block")["block"]
    f = model.stem(x)
    bam = model.block
    gate = torch.sigmoid(bam.channel_att(f) * bam.spatial_att(f))
    torch.testing.assert_close(c.weights, gate.mean(1, keepdim=True))
    torch.testing.assert_close(c.weighted, ((1 + gate) * f).abs().mean(1, keepdim=True))


def test_coordinate_attention_map_is_the_product_of_its_gates() -> None:
    torch.manual_seed(0)
    model = L.Host(L.CoordinateAttention(16)).eval()
    found(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    c = maps_of(model, x, "block")["block"]
    f, ca = model.stem(x), model.block
    h = f.shape[2]
    y = F.relu(ca.bn1(ca.conv1(torch.cat([f.mean(3, True), f.mean(2, True).transpose(2, 3)], 2))))
    a_h = torch.sigmoid(ca.conv_h(y[:, :, :h]))
    a_w = torch.sigmoid(ca.conv_w(y[:, :, h:].transpose(2, 3)))
    assert c.weights.shape == (3, 1, 8, 8)
    torch.testing.assert_close(c.weights, (a_h * a_w).mean(1, keepdim=True))


def test_simam_map_is_the_channel_mean_of_its_gate() -> None:
    torch.manual_seed(0)
    model = L.Host(L.SimAM()).eval()
    found(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    f = model.stem(x)
    n = f.shape[2] * f.shape[3] - 1
    d = (f - f.mean((2, 3), True)) ** 2
    gate = torch.sigmoid(d / (4 * (d.sum((2, 3), True) / n + 1e-4)) + 0.5)
    c = maps_of(model, x, "block")["block"]
    torch.testing.assert_close(c.weights, gate.mean(1, keepdim=True))


def test_attention_unet_gate_map_on_a_mask_host() -> None:
    torch.manual_seed(0)
    model = L.AttentionUNet(1).eval()
    found(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    c = maps_of(model, x, "att")["att"]
    skip = model.enc1(x)
    g = model.up(model.enc2(skip))
    gate = model.att
    alpha = gate.psi(F.relu(gate.w_g(g) + gate.w_x(skip)))
    torch.testing.assert_close(c.weights, alpha)
    torch.testing.assert_close(c.weighted, (skip * alpha).abs().mean(1, keepdim=True))


def _non_local_attention(block: L.NonLocalBlock, f: Tensor) -> Tensor:
    theta = block.theta(f).flatten(2).transpose(1, 2)
    phi = block.pool(block.phi(f)).flatten(2)
    return torch.softmax(theta @ phi, dim=-1)


def _by_max(m: Tensor) -> Tensor:
    return m / m.amax(dim=(-2, -1), keepdim=True)


def test_non_local_map_is_the_attention_received_or_the_query_row() -> None:
    torch.manual_seed(0)
    model = L.Host(L.NonLocalBlock(16)).eval()
    found(model)
    x = torch.randn(2, 3, SIZE, SIZE)
    f = model.stem(x)
    a = _non_local_attention(model.block, f)  # (N, 64, 64)
    c = maps_of(model, x, "block")["block"]
    torch.testing.assert_close(c.weights, _by_max(a.mean(1).view(2, 1, 8, 8)))
    assert c.marker is None
    # --query at (x, y) = (0.3, 0.6) of the photo: cell (col 2, row 4) of the 8 x 8 grid.
    with query_points(torch.tensor([[0.3, 0.6], [0.3, 0.6]])):
        c = maps_of(model, x, "block")["block"]
    torch.testing.assert_close(c.weights, _by_max(a[:, 4 * 8 + 2].view(2, 1, 8, 8)))
    torch.testing.assert_close(c.marker, torch.tensor([[2.5 / 8, 4.5 / 8]] * 2))


def test_non_local_with_pooled_keys_shows_the_keys_grid() -> None:
    torch.manual_seed(0)
    model = L.Host(L.NonLocalBlock(16, sub_sample=True)).eval()
    found(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    a = _non_local_attention(model.block, model.stem(x))  # (1, 64, 16)
    c = maps_of(model, x, "block")["block"]
    torch.testing.assert_close(c.weights, _by_max(a.mean(1).view(3, 1, 4, 4)))


def test_sagan_tuple_output_and_danet_position_attention_read_the_same_way() -> None:
    torch.manual_seed(0)
    for block in (L.SelfAttention(16), L.PositionAttention(16)):
        model = L.Host(block).eval()
        found(model)
        x = torch.randn(3, 3, SIZE, SIZE)
        f = model.stem(x)
        q = block.query_conv(f) if hasattr(block, "query_conv") else block.query(f)
        k = block.key_conv(f) if hasattr(block, "key_conv") else block.key(f)
        a = torch.softmax(q.flatten(2).transpose(1, 2) @ k.flatten(2), dim=-1)
        c = maps_of(model, x, "block")["block"]
        torch.testing.assert_close(c.weights, _by_max(a.mean(1).view(3, 1, 8, 8)))


def test_criss_cross_map_by_hand_and_its_two_calls_give_one_layer() -> None:
    torch.manual_seed(0)
    model = L.Host(L.RecurrentCrissCross(16)).eval()
    with torch.no_grad():
        model.block.cca.gamma.fill_(0.5)
    found(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    kept: list[Tensor] = []
    handle = model.block.cca.register_forward_hook(lambda _m, i, _o: kept.append(i[0]))
    with query_points(torch.tensor([[0.3, 0.6]])):
        c = maps_of(model, x, "block.cca")["block.cca"]
    handle.remove()
    assert len(kept) == 2  # called twice; the map is the second call's
    cca, f = model.block.cca, kept[-1]
    with torch.inference_mode():
        q, k = cca.query(f), cca.key(f)
    h = w = 8
    # energy of position (i, j) to key (k, j) in its column and (i, l) in its row
    col = torch.einsum("ncij,nckj->nijk", q, k)
    col = col + torch.diag(torch.full((h,), float("-inf"))).view(1, h, 1, h)  # not itself
    row = torch.einsum("ncij,ncil->nijl", q, k)
    a = torch.softmax(torch.cat([col, row], dim=3), dim=3)
    i, j = 4, 2
    cross = torch.zeros(h, w)
    cross[:, j] += a[0, i, j, :h]
    cross[i, :] += a[0, i, j, h:]
    torch.testing.assert_close(c.weights[0, 0], cross / cross.max())


def test_hooks_and_modes_are_gone_after_a_run_and_after_an_error() -> None:
    model = L.Host(L.NonLocalBlock(16)).eval()
    found(model)
    with torch.inference_mode(), capture_maps(model, "block"):
        model(torch.randn(1, 3, SIZE, SIZE))
    with pytest.raises(RuntimeError), torch.inference_mode(), capture_maps(model, "block"):
        model(torch.randn(1, 5, SIZE, SIZE))  # wrong channels: fails inside the stem
    with pytest.raises(RuntimeError), torch.inference_mode(), capture_maps(model, "block"):
        model.block(torch.randn(1, 5, 8, 8))  # fails inside the layer, its mode pushed
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0


def test_discovery_leaves_no_hooks_and_declared_layers_stay_as_they_are() -> None:
    from attnviz.models.registry import get_spec

    net = get_spec("lite0-cbam").build(True).eval()
    before = {n: c.found_by for n, c in layer_capturers(net).items()}
    declared = set(before)
    discovery = discover(net, torch.randn(2, 3, 64, 64), covered=declared)
    assert discovery.layers == {}  # the trunk has no attention of its own: nothing false
    assert {n: c.found_by for n, c in layer_capturers(net).items()} == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_layer_list_is_kept_per_model_and_renewed_when_the_model_changes() -> None:
    model = L.Host(nn.Identity()).eval()
    assert layer_capturers(model) == {}
    model.block = L.SpatialGateFunctional()  # a new module: listed anew
    found(model)  # discovery ran again: listed anew
    assert list(layer_capturers(model)) == ["block"]


def test_global_context_map_is_its_softmax_over_positions() -> None:
    torch.manual_seed(0)
    model = L.Host(L.GlobalContext(16)).eval()
    found(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    c = maps_of(model, x, "block")["block"]
    with torch.inference_mode():
        f = model.stem(x)
        weights = torch.softmax(model.block.conv_mask(f).flatten(1), dim=1).view(3, 1, 8, 8)
    torch.testing.assert_close(c.weights, _by_max(weights))
    torch.testing.assert_close(c.weighted, (c.weights * f).abs().mean(1, keepdim=True))


@pytest.mark.parametrize(
    "block",
    [L.Swish(), L.GatedLinearUnit(16), L.LearntBlend(16), L.FixedMask(), L.HeadsFirstAttention(16)],
    ids=lambda b: type(b).__name__,
)
def test_what_only_looks_like_attention_is_not_listed(block: nn.Module) -> None:
    assert found(L.Host(block)) == {}


def test_a_layer_inside_another_does_not_change_its_map() -> None:
    torch.manual_seed(0)
    model = L.Host(L.OuterGate(16)).eval()
    assert found(model) == {"block": "sigmoid gate", "block.inner": "coordinate gate"}
    x = torch.randn(3, 3, SIZE, SIZE)
    alone = maps_of(model, x, "block")["block"]
    both = maps_of(model, x, "all")
    torch.testing.assert_close(both["block"].weights, alone.weights)
    torch.testing.assert_close(both["block"].weighted, alone.weighted)


def test_a_layer_used_at_another_size_keeps_the_call_it_was_learnt_on() -> None:
    torch.manual_seed(0)
    model = L.Host(L.TwoSizes(16)).eval()
    assert found(model) == {"block.block": "softmax attention"}
    c = maps_of(model, torch.randn(3, 3, SIZE, SIZE), "block.block")["block.block"]
    assert c.weights.shape == (3, 1, 8, 8)  # the second, smaller call gave no capture


def test_an_interrupted_forward_leaves_no_watcher_behind() -> None:
    model = L.Host(L.NonLocalBlock(16)).eval()
    found(model)

    def interrupt(_module: nn.Module, _inputs: tuple) -> None:
        raise KeyboardInterrupt

    handle = model.block.w.register_forward_pre_hook(interrupt)  # inside the watched layer
    with pytest.raises(KeyboardInterrupt), torch.inference_mode(), capture_maps(model, "block"):
        model(torch.randn(1, 3, SIZE, SIZE))
    handle.remove()
    assert torch._C._len_torch_function_stack() == 0


def test_the_layer_list_is_renewed_when_modules_are_added() -> None:
    model = L.Host(L.SpatialGateFunctional()).eval()
    found(model)
    assert list(layer_capturers(model)) == ["block"]
    model.block.extra = L.SpatialGateFunctional()  # declared by no one: still not listed
    model.block.declared = L.SqueezeExcite(16)
    assert list(layer_capturers(model)) == ["block"]
    from tests.toy_models import ToyGated

    model.toy = ToyGated()  # modules that declare themselves: listed at once
    assert {"toy.gate1", "toy.gate2"} <= set(layer_capturers(model))


@pytest.mark.parametrize(
    ("call", "args", "kwargs"),
    [
        (torch.Tensor.transpose, (2, 3), {}),
        (torch.Tensor.transpose, (), {"dim0": 2, "dim1": 3}),
        (torch.Tensor.transpose, (2,), {"dim1": 3}),
        (torch.transpose, (-2, -1), {}),
        (torch.Tensor.swapaxes, (), {"axis0": 2, "axis1": 3}),
        (torch.swapdims, (3, 2), {}),
        (torch.Tensor.permute, (), {"dims": (0, 1, 3, 2)}),
        (torch.Tensor.permute, (0, 1, 3, 2), {}),
        (torch.Tensor.permute, ((0, 1, 3, 2),), {}),
        (torch.permute, (), {"dims": (0, 1, 3, 2)}),
        (torch.Tensor.movedim, (3, 2), {}),
        (torch.movedim, (), {"source": 2, "destination": 3}),
        (torch.Tensor.moveaxis, ((2, 3), (3, 2)), {}),
    ],
)
def test_a_swap_of_the_image_axes_reads_the_same_however_it_is_spelt(call, args, kwargs) -> None:
    from attnviz.attention.discovery import _permutation

    x = torch.zeros(1, 2, 3, 4)
    assert _permutation(call, (x, *args), kwargs) == (0, 1, 3, 2)
