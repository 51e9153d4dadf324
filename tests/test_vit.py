"""Self-attention in torchvision's ViT: fused attention read back exactly, rollout, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from attnviz.attention import attention_layers, capture_maps
from attnviz.models.vit import attention_weights
from tests.conftest import attnviz, write_photo


def tiny_vit(image_size: int = 32, patch_size: int = 8, layers: int = 3) -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=layers, num_heads=2,
        hidden_dim=16, mlp_dim=32, num_classes=5,
    )  # fmt: skip
    for p in vit.parameters():  # torchvision zero-initialises some; make every weight matter
        nn.init.normal_(p, std=0.3)
    return vit.eval()


def block_inputs(vit: VisionTransformer, x: Tensor) -> list[Tensor]:
    """What each encoder block receives, recorded by plain hooks (not attnviz's)."""
    seen: list[Tensor] = []
    handles = [
        b.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        for b in vit.encoder.layers
    ]
    with torch.no_grad():
        vit(x)
    for h in handles:
        h.remove()
    return seen


def by_hand(block: nn.Module, tokens: Tensor) -> Tensor:
    """softmax(q_h k_h^T / sqrt(d_h)) head by head, from the block's own parameters."""
    mha = block.self_attention
    y = block.ln_1(tokens)
    d = y.shape[-1]
    dh = d // mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    heads = []
    for h in range(mha.num_heads):
        rows = slice(h * dh, (h + 1) * dh)
        q = y @ w[:d][rows].T + b[:d][rows]
        k = y @ w[d : 2 * d][rows].T + b[d : 2 * d][rows]
        heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), dim=-1))
    return torch.stack(heads, dim=1)


def test_fused_attention_is_recomputed_exactly() -> None:
    vit = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    for block, tokens in zip(vit.encoder.layers, block_inputs(vit, x), strict=True):
        with torch.no_grad():
            ours = attention_weights(block, tokens)
            y = block.ln_1(tokens)
            _, torch_weights = block.self_attention(
                y, y, y, need_weights=True, average_attn_weights=False
            )
            hand = by_hand(block, tokens)
        assert ours.shape == (2, 2, 17, 17)  # 2 heads, class token + 4x4 patches
        torch.testing.assert_close(ours, hand)
        torch.testing.assert_close(ours, torch_weights)


def test_layers_are_found_by_adapter_and_captures_read_like_their_definition() -> None:
    vit = tiny_vit()
    names = [n for n, _ in attention_layers(vit)]
    assert names == ["encoder"] + [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = vit(x)
        with capture_maps(vit, "all") as maps:
            captured_logits = vit(x)
    torch.testing.assert_close(captured_logits, plain)  # capture never touches the output
    assert sum(len(m._forward_hooks) for m in vit.modules()) == 0

    inputs = block_inputs(vit, x)
    flow = torch.eye(17).expand(2, -1, -1)
    for i, (block, tokens) in enumerate(zip(vit.encoder.layers, inputs, strict=True)):
        attention = by_hand(block, tokens)
        cls = attention[:, :, 0, 1:].mean(1).reshape(2, 1, 4, 4)
        expected = cls / cls.amax(dim=(2, 3), keepdim=True)
        block_capture = maps[f"encoder.layers.encoder_layer_{i}"]
        torch.testing.assert_close(block_capture.weights, expected)
        assert list(block_capture.parts) == ["head 1", "head 2"]
        for h in range(2):
            head = attention[:, h, 0, 1:].reshape(2, 1, 4, 4)
            part_weights, part_weighted = block_capture.parts[f"head {h + 1}"]
            torch.testing.assert_close(part_weights, head / head.amax(dim=(2, 3), keepdim=True))
            torch.testing.assert_close(part_weighted, block_capture.weighted)
        mixed = 0.5 * attention.mean(1) + 0.5 * torch.eye(17)
        flow = (mixed / mixed.sum(-1, keepdim=True)) @ flow
    rollout = flow[:, 0, 1:].reshape(2, 1, 4, 4)
    torch.testing.assert_close(
        maps["encoder"].weights, rollout / rollout.amax(dim=(2, 3), keepdim=True)
    )
    for capture in maps.values():
        assert capture.weights.shape == capture.weighted.shape == (2, 1, 4, 4)
        assert capture.weights.amax() == pytest.approx(1.0) and capture.weights.min() >= 0


def test_uniform_attention_gives_a_flat_map() -> None:
    """Zero query/key projections: every token attends equally, so every patch scores 1."""
    vit = tiny_vit()
    with torch.no_grad():
        for block in vit.encoder.layers:
            d = block.self_attention.embed_dim
            block.self_attention.in_proj_weight[: 2 * d] = 0
            block.self_attention.in_proj_bias[: 2 * d] = 0
    with torch.no_grad(), capture_maps(vit, "all") as maps:
        vit(torch.randn(1, 3, 32, 32))
    for capture in maps.values():
        torch.testing.assert_close(capture.weights, torch.ones(1, 1, 4, 4))


USER_VIT = """
from tests.test_vit import tiny_vit

def build():
    return tiny_vit(image_size=224, patch_size=32, layers=2)
"""


def test_cli_user_vit_layers_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnviz.cli import output as cli

    monkeypatch.setattr(cli.out_console, "width", 200)
    source = tmp_path / "my_vit.py"
    source.write_text(USER_VIT)
    code, output = attnviz("layers", "--model", f"{source}:build")
    assert code == 0, output
    assert "vit-rollout" in output and "vit-cls-attention" in output and "adapter" in output

    photo = write_photo(tmp_path / "p.jpg", (120, 90))
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", f"{source}:build", "--layer", "all",
                           "--out", out)  # fmt: skip
    assert code == 0, output
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert record["layers"] == ["encoder", "encoder.layers.encoder_layer_0",
                                "encoder.layers.encoder_layer_1"]  # fmt: skip
    assert (out / "p.png").is_file()

    # --parts: each block's heads as rows after it (rollout has none), in the manifest too.
    code, output = attnviz("run", photo, "--model", f"{source}:build", "--layer", "all",
                           "--parts", "--out", out)  # fmt: skip
    assert code == 0, output
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert record["layers"] == [
        "encoder",
        *(f"encoder.layers.encoder_layer_{i}{part}" for i in range(2)
          for part in ("", "[head 1]", "[head 2]")),
    ]  # fmt: skip


def test_cli_built_in_vit_needs_weights_and_its_own_size(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    code, output = attnviz("run", photo, "--model", "vit-b16", "--out", tmp_path / "o")
    assert code == 2 and "--weights" in output
    code, output = attnviz("run", photo, "--model", "vit-b16", "--random-init", "--size", "320",
                           "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "224 px only" in output
