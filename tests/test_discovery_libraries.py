"""Discovery on the library classes themselves: timm and torchvision transformers and
hybrid attention, random-initialised (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from attnviz.attention import capture_maps, discover
from attnviz.attention.protocol import query_points

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")


def _discover(model: nn.Module, size: int) -> dict[str, str]:
    torch.manual_seed(0)
    found = discover(model.eval(), torch.randn(2, 3, size, size))
    return {name: recipe.pattern for name, recipe in found.layers.items()}


def _by_max(m: Tensor) -> Tensor:
    return m / m.amax(dim=(-2, -1), keepdim=True)


@pytest.mark.parametrize(
    ("name", "size", "count", "first"),
    [
        ("vit_tiny_patch16_224", 224, 12, "blocks.0.attn"),
        ("swin_tiny_patch4_window7_224", 224, 12, "layers.0.blocks.0.attn"),
        ("botnet26t_256", 256, 3, "stages.2.1.self_attn"),
        ("maxvit_tiny_tf_224", 224, 22, "stages.0.blocks.0.attn_block.attn"),
    ],
)
def test_timm_attention_is_found_in_every_block(name: str, size: int, count: int, first: str):
    torch.manual_seed(0)
    layers = _discover(timm.create_model(name, pretrained=False), size)
    assert len(layers) == count
    assert next(iter(layers)) == first


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        ("swin_t", 12, "features.1.0.attn"),
        ("maxvit_t", 22, "blocks.0.layers.0.layers.window_attention.attn_layer.1"),
    ],
)
def test_torchvision_windowed_attention_is_found(name: str, count: int, first: str) -> None:
    torch.manual_seed(0)
    layers = _discover(getattr(tvm, name)(), 224)
    assert len(layers) == count
    assert next(iter(layers)) == first


def test_timm_channel_attention_is_not_spatial() -> None:
    torch.manual_seed(0)
    model = timm.create_model("seresnet18", pretrained=False).eval()
    found = discover(model, torch.randn(2, 3, 64, 64))
    assert found.layers == {}
    assert found.channel_only[0] == ("layer1.0.se", "channel gate")


def test_fused_vit_attention_map_is_the_class_token_row_computed_from_q_and_k() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    discover(model, torch.randn(2, 3, 224, 224))
    attn = model.blocks[3].attn
    assert attn.fused_attn  # the weights never exist as a tensor in the model
    seen: list[Tensor] = []
    handle = attn.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode(), capture_maps(model, "blocks.3.attn") as maps:
        model(x)
    handle.remove()
    tokens = seen[0]
    n, t, c = tokens.shape
    heads = attn.num_heads
    with torch.inference_mode():
        qkv = attn.qkv(tokens).reshape(n, t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) * attn.scale, dim=-1)
    cls_row = a[:, :, 0, 1:].mean(1).reshape(n, 1, 14, 14)
    torch.testing.assert_close(maps["blocks.3.attn"].weights, _by_max(cls_row))


def test_shifted_window_attention_is_stitched_back_onto_the_image() -> None:
    """timm Swin, a shifted block of stage 1: windows of 7 x 7 on the 56 x 56 grid, rolled by 3.
    By hand: each window's received attention (mean over its queries and heads), windows put
    back in place, the roll undone."""
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    discover(model, torch.randn(2, 3, 224, 224))
    block = model.layers[0].blocks[1]
    shift = block.shift_size
    assert shift == (3, 3)
    kept: list[Tensor] = []
    handle = block.attn.softmax.register_forward_hook(lambda _m, _i, o: kept.append(o))
    with torch.inference_mode(), capture_maps(model, "layers.0.blocks.1.attn") as maps:
        model(torch.randn(1, 3, 224, 224))
    handle.remove()
    a = kept[0]  # (windows, heads, 49, 49)
    received = a.mean(dim=(1, 2))  # (64 windows, 49 keys)
    grid = received.reshape(8, 8, 7, 7).permute(0, 2, 1, 3).reshape(56, 56)
    grid = torch.roll(grid, shifts=shift, dims=(0, 1))
    torch.testing.assert_close(maps["layers.0.blocks.1.attn"].weights[0, 0], grid / grid.max())


def test_windowed_query_row_covers_only_the_query_window() -> None:
    torch.manual_seed(0)
    model = tvm.swin_t().eval()
    discover(model, torch.randn(2, 3, 224, 224))
    with (
        torch.inference_mode(),
        query_points(torch.tensor([[0.1, 0.1]])),
        capture_maps(model, "features.1.0.attn") as maps,  # not shifted
    ):
        model(torch.randn(1, 3, 224, 224))
    row = maps["features.1.0.attn"].weights[0, 0]
    assert row.shape == (56, 56)
    inside = torch.zeros(56, 56, dtype=torch.bool)
    inside[:7, :7] = True  # (0.1, 0.1) of the grid is cell (5, 5): the first window
    assert bool((row[~inside] == 0).all()) and float(row[inside].max()) == 1.0


def test_halo_attention_keys_are_placed_on_their_overlapping_windows() -> None:
    """timm HaloAttn: each 4 x 4 block of queries attends to its 6 x 6 window (halo 1), cut
    from the padded feature map. The row of a query in the top-left block covers exactly that
    window's cells inside the image."""
    from timm.layers.halo_attn import HaloAttn

    torch.manual_seed(0)
    block = HaloAttn(16, 16, num_heads=2, block_size=4, halo_size=1)
    model = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), block, nn.AdaptiveAvgPool2d(1)).eval()
    discover(model, torch.randn(2, 3, 32, 32))  # an 8 x 8 grid: four blocks
    with (
        torch.inference_mode(),
        query_points(torch.tensor([[0.2, 0.2]])),
        capture_maps(model, "1") as maps,
    ):
        model(torch.randn(1, 3, 32, 32))
    row = maps["1"].weights[0, 0]
    window = torch.zeros(8, 8, dtype=torch.bool)
    window[:5, :5] = True  # rows and columns -1 … 4 of the padded map, clipped to the image
    assert bool((row[window] > 0).all()) and bool((row[~window] == 0).all())
    assert maps["1"].parts["mean received"][0].shape == (1, 1, 8, 8)


def test_halonet_attention_is_found_in_every_block() -> None:
    torch.manual_seed(0)
    layers = _discover(timm.create_model("halonet26t", pretrained=False), 256)
    assert list(layers) == ["stages.2.1.self_attn", "stages.3.0.self_attn", "stages.3.1.self_attn"]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_hugging_face_vit_attention_is_found_either_way(implementation: str) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=10,
        attn_implementation=implementation,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    layers = _discover(model, 64)
    modules = dict(model.named_modules())
    assert len(layers) == 2  # one per encoder layer: its self-attention module
    assert all("Attention" in type(modules[name]).__name__ for name in layers)
    with torch.inference_mode(), capture_maps(model, "-1") as maps:
        out = model(torch.randn(1, 3, 64, 64))  # a ModelOutput: logits found by key
    assert out.logits.shape == (1, 10)
    assert maps[list(layers)[-1]].weights.shape == (1, 1, 4, 4)
