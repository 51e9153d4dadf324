"""CBAM (Woo et al., ECCV 2018): channel gate and spatial gate.

The spatial gate is the canonical spatial attention of the field:
``M_s(F) = sigmoid(conv_kxk([AvgPool_c(F); MaxPool_c(F)]))`` and ``F_out = M_s(F) * F``.
Submodule names follow the CBAM authors' ImageNet code (``ChannelGate.mlp.{1,3}``,
``SpatialGate.spatial.{conv,bn}``) so their checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture
from attnviz.models.gates import (
    PoolOrder,
    add_map_buffers,
    applied_caption,
    captured_map,
    channel_pool,
    computed_map,
    floored,
    mean_filled,
    seed_centre_tap,
    standardised_sigmoid,
    standardize_per_image,
)


class ConvBN(nn.Module):
    """A convolution optionally followed by BatchNorm (the authors' ``BasicConv`` without ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=not batch_norm
        )
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.01) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return self.bn(x) if self.bn is not None else x


class SpatialGate(nn.Module):
    """CBAM spatial attention: a k x k conv over [mean; max] channel pools, then a sigmoid.

    ``standardize`` normalises the two pooled maps per image before the convolution
    (used by attnviz's own trained gates); the authors' layout uses BatchNorm instead.
    """

    attention_family = "cbam-spatial"
    attention_listed = True  # False: captured through the module that holds it (CBAM)
    # Buffers of a squashed gate (gates.add_map_buffers).
    floor: Tensor
    sharpness: Tensor
    offset: Tensor

    def __init__(
        self,
        kernel_size: int = 7,
        *,
        pool_order: PoolOrder = "avg-max",
        batch_norm: bool = False,
        standardize: bool = False,
        squash: bool = False,
    ) -> None:
        super().__init__()
        self.pool_order: PoolOrder = pool_order
        self.standardize = standardize
        self.spatial = ConvBN(2, 1, kernel_size, batch_norm)
        self.squash = squash
        if squash:
            # attnviz's Lite0 gates: the logits are standardised per photo, so M uses the
            # whole [0, 1] scale (M = sigmoid(sharpness z + offset)), and the features are
            # scaled by floor + (1 - floor) M, so a gate can shut without starving the
            # layers after it. Buffers: a weights file says how its maps were made.
            add_map_buffers(self)
        # Share of the spatial mean that fills suppressed positions: 0 is CBAM's plain product.
        # Only training raises it, so early gates can suppress without starving later layers.
        self.fill = 0.0

    def attention_map(self, x: Tensor) -> Tensor:
        """The spatial weights M_s(x), shape (N, 1, H, W), values in (0, 1)."""
        pooled = channel_pool(x, self.pool_order)
        if self.standardize:
            pooled = standardize_per_image(pooled)
        logits = self.spatial(pooled)
        if self.squash:
            return standardised_sigmoid(logits, self.sharpness, self.offset)
        return torch.sigmoid(logits)

    def applied(self, weights: Tensor) -> Tensor:
        """What multiplies the features: M, or floor + (1 - floor) M for a squashed gate."""
        return floored(weights, self.floor) if self.squash else weights

    def gated(self, x: Tensor, weights: Tensor) -> Tensor:
        return mean_filled(x, self.applied(weights), self.fill)

    def seed(self, slope: float) -> None:
        seed_centre_tap(self.spatial.conv, 0 if self.pool_order == "avg-max" else 1, slope)
        # The authors' layout has no conv bias: BatchNorm's shift plays its part.
        shift = self.spatial.conv.bias if self.spatial.bn is None else self.spatial.bn.bias
        assert shift is not None
        nn.init.zeros_(shift)

    def shape_parameters(self) -> list[Tensor]:
        return [self.spatial.conv.weight]

    def forward(self, x: Tensor) -> Tensor:
        return self.gated(x, computed_map(self, x))

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:  # noqa: ARG002
        features = inputs[0]
        weights = captured_map(self, features)
        caption = applied_caption(float(self.floor)) if self.squash else None
        return AttentionCapture.from_weighted(weights, self.applied(weights) * features, caption)


class ChannelGate(nn.Module):
    """CBAM channel attention: a shared MLP over avg- and max-pooled vectors, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        # Indices 1 and 3 match the authors' nn.Sequential(Flatten, Linear, ReLU, Linear).
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )

    def channel_weights(self, x: Tensor) -> Tensor:
        """Per-channel weights, shape (N, C), values in (0, 1)."""
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.channel_weights(x)[:, :, None, None]


class CBAM(nn.Module):
    """Channel gate then spatial gate, as in the paper.

    CBAM is the captured layer, not its spatial gate: only here are both gates' inputs seen,
    so the capture carries the spatial map and the channel weights that ran with it.
    """

    attention_family = "cbam"

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate(kernel_size, pool_order="max-avg", batch_norm=True)
        self.SpatialGate.attention_listed = False  # captured through this module

    def forward(self, x: Tensor) -> Tensor:
        return self.SpatialGate(self.ChannelGate(x))

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:  # noqa: ARG002
        channels = self.ChannelGate.channel_weights(inputs[0])
        features = inputs[0] * channels[:, :, None, None]
        weights = self.SpatialGate.attention_map(features)
        capture = AttentionCapture.from_weighted(weights, weights * features)
        return replace(capture, channels=channels.detach())
