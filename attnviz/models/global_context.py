"""Global context attention (GCNet, Cao et al. 2019), as timm's ``GlobalContext``.

A GC block pools the whole feature map into one context vector with learnt weights,
``a = softmax_positions(conv1x1(x))`` and ``context = sum_j a_j x_j``, then turns the
context into a channel gate (``fuse_scale``) and/or a per-channel term added everywhere
(``fuse_add``). Its only spatial attention is ``a``: where the context is read from.

The map shown is ``a`` divided by its maximum over the photo (``a`` sums to 1 over all
positions, so its raw values shrink with the map's size); the weighted map is
``|a / max(a) ⊗ x|`` averaged over channels, each position's share of the context up to
that same scale. With ``fuse_scale`` the channel gate's weights ride along as
``AttentionCapture.channels``. A block built with ``use_attn=False`` pools by a plain mean
and has no map: it is not listed as attention.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture


def context_weights(block: nn.Module, x: Tensor) -> Tensor:
    """The softmax over positions of the block's 1x1 convolution, (N, 1, H, W), sums to 1."""
    n, _, h, w = x.shape
    logits = block.conv_attn(x).reshape(n, 1, h * w)  # type: ignore[operator]
    return torch.softmax(logits, dim=-1).reshape(n, 1, h, w)


def capture_timm_global_context(
    block: nn.Module, inputs: tuple[Tensor, ...], _output: object
) -> AttentionCapture:
    """The adapter's capture of timm's ``GlobalContext``: a / max(a), its weighted features, and
    the channel gate's weights where ``fuse_scale`` gives a gate in [0, 1]."""
    x = inputs[0]
    attention = context_weights(block, x)
    weights = attention / attention.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    found = AttentionCapture.from_weighted(weights, weights * x)
    channels = None
    if block.mlp_scale is not None:
        context = (x * attention).sum(dim=(2, 3), keepdim=True)
        gate = block.gate(block.mlp_scale(context)).flatten(1)  # type: ignore[operator]
        # The protocol's channel strip is a gate in [0, 1]; another activation is not shown.
        if gate.min() >= 0 and gate.max() <= 1:
            channels = gate.detach()
    return AttentionCapture(found.weights, found.weighted, channels=channels)
