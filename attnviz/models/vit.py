"""Self-attention of Vision Transformers (torchvision's ``VisionTransformer``).

torchvision runs attention fused (``need_weights=False``), so the weights never exist
as a tensor. attnviz recomputes them from what a forward hook sees, without changing the
model: a block's input, its LayerNorm and the attention's input projection give
``softmax(q k^T / sqrt(d))`` per head, exactly as the fused kernel computed it.

Two maps, both brought to [0, 1] by dividing by their maximum over the photo (raw
attention sums to 1 over all tokens, so its values are tiny):

- each encoder block: the attention the class token pays to every patch, averaged over
  heads (the map the classifier's token reads from), and each head's own as parts
  (``attnviz run --parts``);
- the encoder: attention rollout (Abnar & Zuidema, 2020): each block's head-averaged
  attention, mixed half and half with the identity for the residual path and
  renormalised, multiplied through the blocks; the class token's row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture


def attention_weights(block: nn.Module, tokens: Tensor) -> Tensor:
    """Attention probabilities (N, heads, T, T) of an ``EncoderBlock`` for its input tokens."""
    attention: nn.MultiheadAttention = block.self_attention  # type: ignore[assignment]
    x = block.ln_1(tokens)  # type: ignore[operator]
    n, t, d = x.shape
    heads = attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    q = F.linear(x, weight[:d], None if bias is None else bias[:d])
    k = F.linear(x, weight[d : 2 * d], None if bias is None else bias[d : 2 * d])
    q = q.view(n, t, heads, d // heads).transpose(1, 2)
    k = k.view(n, t, heads, d // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)


def patch_grid(per_patch: Tensor) -> Tensor:
    """(N, P) values of the P = g * g patch tokens -> (N, 1, g, g), in image order."""
    side = math.isqrt(per_patch.shape[1])
    if side * side != per_patch.shape[1]:
        raise ValueError(f"{per_patch.shape[1]} patch tokens do not form a square grid")
    return per_patch.reshape(-1, 1, side, side)


def _peak_grid(cls_row: Tensor) -> Tensor:
    """(N, P) attention over the patches -> (N, 1, g, g) grid divided by its maximum."""
    grid = patch_grid(cls_row)
    return (grid / grid.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)).detach()


def _capture(cls_row: Tensor, output: Tensor, heads: Tensor | None = None) -> AttentionCapture:
    """The class token's (N, P) attention over the patches, divided by its maximum, and the
    mean |feature| of each output patch token (the class token dropped), both as grids;
    ``heads`` (N, H, P), each head's own row, become the parts "head 1" ... "head H"."""
    weighted = patch_grid(output[:, 1:].abs().mean(-1)).detach()
    parts = {} if heads is None else {
        f"head {h + 1}": (_peak_grid(heads[:, h]), weighted) for h in range(heads.shape[1])
    }  # fmt: skip
    return AttentionCapture(_peak_grid(cls_row), weighted, parts=parts)


def capture_block(block: nn.Module, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
    """A block's class-token attention over the patches, averaged over heads; each head's
    own as parts."""
    heads = attention_weights(block, inputs[0])[:, :, 0, 1:]
    return _capture(heads.mean(dim=1), output, heads)  # type: ignore[arg-type]


def rollout(encoder: nn.Module, tokens: Tensor) -> Tensor:
    """Attention rollout through every block of an ``Encoder``: (N, T, T).

    The hook sees only the encoder's input, so the blocks run a second time here: selecting
    ``encoder`` costs about one more encoder pass per photo.
    """
    x = encoder.dropout(tokens + encoder.pos_embedding)  # type: ignore[operator]
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    flow = eye.expand(x.shape[0], -1, -1)
    for block in encoder.layers:  # type: ignore[union-attr]
        mixed = 0.5 * attention_weights(block, x).mean(dim=1) + 0.5 * eye
        flow = (mixed / mixed.sum(dim=-1, keepdim=True)) @ flow
        x = block(x)
    return flow


def capture_encoder(
    encoder: nn.Module, inputs: tuple[Tensor, ...], output: object
) -> AttentionCapture:
    """The class token's row of the attention rollout, over the patches."""
    return _capture(rollout(encoder, inputs[0])[:, 0, 1:], output)  # type: ignore[arg-type]
