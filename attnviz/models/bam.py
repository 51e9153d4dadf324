"""BAM, the bottleneck attention module (Park et al., BMVC 2018).

A channel branch (global average pool, an MLP with one hidden layer of C/r units) and a
spatial branch (1x1 reduction to C/r, two dilated 3x3 convolutions, 1x1 to one channel)
are multiplied, and the result is a residual attention: ``F_out = (1 + sigmoid(c * s)) * F``.
attnviz shows ``sigmoid(s)``, the spatial branch alone, as the weight map: the product
with the channel branch differs per channel and has no single spatial picture.

Submodule names follow the BAM authors' code (``channel_att.gate_c.gate_c_fc_0``,
``spatial_att.gate_s.gate_s_conv_reduce0`` ...), so their checkpoints load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

import torch
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture
from attnviz.models.gates import (
    add_map_buffers,
    applied_caption,
    captured_map,
    computed_map,
    floored,
    standardised_sigmoid,
)


class BAMChannelGate(nn.Module):
    """The channel branch: (N, C, H, W) -> per-channel logits (N, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        # The authors number the BatchNorm one ahead of its Linear: fc_0, then bn_1.
        self.gate_c = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                gate_c_fc_0=nn.Linear(channels, hidden),
                gate_c_bn_1=nn.BatchNorm1d(hidden),
                gate_c_relu_1=nn.ReLU(),
                gate_c_fc_final=nn.Linear(hidden, channels),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.gate_c(x.mean(dim=(2, 3)))[:, :, None, None]


class BAMSpatialGate(nn.Module):
    """The spatial branch: (N, C, H, W) -> spatial logits (N, 1, H, W)."""

    def __init__(
        self, channels: int, reduction: int = 16, dilated_convs: int = 2, dilation: int = 4
    ) -> None:
        super().__init__()
        hidden = channels // reduction
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            gate_s_conv_reduce0=nn.Conv2d(channels, hidden, 1),
            gate_s_bn_reduce0=nn.BatchNorm2d(hidden),
            gate_s_relu_reduce0=nn.ReLU(),
        )
        for i in range(dilated_convs):
            layers[f"gate_s_conv_di_{i}"] = nn.Conv2d(
                hidden, hidden, 3, padding=dilation, dilation=dilation
            )
            layers[f"gate_s_bn_di_{i}"] = nn.BatchNorm2d(hidden)
            layers[f"gate_s_relu_di_{i}"] = nn.ReLU()
        layers["gate_s_conv_final"] = nn.Conv2d(hidden, 1, 1)
        self.gate_s = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.gate_s(x)


class BAM(nn.Module):
    """``F_out = (1 + sigmoid(channel(F) * spatial(F))) * F``; captured: sigmoid(spatial(F))."""

    attention_family = "bam"

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel_att = BAMChannelGate(channels, reduction)
        self.spatial_att = BAMSpatialGate(channels, reduction)

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the residual attention 1 + sigmoid(c * s), (N, C, H, W); the spatial logits s)."""
        spatial = self.spatial_att(x)
        return 1.0 + torch.sigmoid(self.channel_att(x) * spatial), spatial

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x)[0] * x

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        features = inputs[0]
        spatial = self.spatial_att(features)
        # The module's own output is the weighted feature map; recompute it only if the
        # model handed on something else (it never does in the authors' layout).
        weighted = output if isinstance(output, Tensor) else self.forward(features)
        # What scales F is 1 + sigmoid(c * s), c the channel branch: say so under the map.
        applied = "1 + sigmoid(c s), M = sigmoid(s)"
        return AttentionCapture.from_weighted(torch.sigmoid(spatial), weighted, applied)


class BAMGate(BAM):
    """BAM in a Lite0 gate slot (``lite0-bam``): BAM's residual form with a floor.

    The authors' ``(1 + sigmoid(c * s)) * F`` is twice ``(0.5 + 0.5 sigmoid(c * s)) * F``;
    here the floor is a setting, as for the other Lite0 gates:
    ``F_out = (floor + (1 - floor) sigmoid(c * s)) * F``, and the spatial logits are
    standardised per photo as theirs are (``gates.StandardisedGate``):
    ``s = sharpness z + offset``. ``attention_map`` is the map attnviz shows,
    M = sigmoid(s); ``gated`` recovers s from it (approximately where M saturates in
    float32, |s| > 16: what is applied there is off by less than 0.003). BAM only scales
    up from its floor, so ``fill`` (which refills what a multiplicative gate suppresses)
    has nothing to do here.
    """

    floor: Tensor
    sharpness: Tensor
    offset: Tensor

    def __init__(self, channels: int, reduction: int = 16) -> None:
        # The authors' r = 16 leaves block 4's 40 channels 2 hidden units; fewer than one
        # would leave none, so the reduction never goes below one unit.
        super().__init__(channels, min(reduction, channels))
        add_map_buffers(self)
        self.fill = 0.0

    def attention_map(self, x: Tensor) -> Tensor:
        return standardised_sigmoid(self.spatial_att(x), self.sharpness, self.offset)

    def gated(self, x: Tensor, weights: Tensor) -> Tensor:
        spatial = torch.logit(weights, eps=1e-7)
        return floored(torch.sigmoid(self.channel_att(x) * spatial), self.floor) * x

    def forward(self, x: Tensor) -> Tensor:
        return self.gated(x, computed_map(self, x))

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        features = inputs[0]
        weights = captured_map(self, features)
        weighted = output if isinstance(output, Tensor) else self.gated(features, weights)
        applied = applied_caption(float(self.floor), "sigmoid(c s)") or "sigmoid(c s)"
        return AttentionCapture.from_weighted(weights, weighted, f"{applied}, M = sigmoid(s)")

    def seed(self, slope: float) -> None:  # noqa: ARG002 - BAM's spatial branch starts flat
        # BAM's spatial branch sees the raw channels through a learnt 1x1 reduction, not
        # their mean: it starts flat (final conv zero) and learns its shape; the channel
        # branch starts at c = 1 for every channel, so the output starts as
        # (floor + (1 - floor) M) * F.
        spatial_final = cast(nn.Conv2d, self.spatial_att.gate_s.gate_s_conv_final)
        nn.init.zeros_(spatial_final.weight)
        nn.init.zeros_(cast(Tensor, spatial_final.bias))  # built with one
        channel_final = cast(nn.Linear, self.channel_att.gate_c.gate_c_fc_final)
        nn.init.zeros_(channel_final.weight)
        nn.init.ones_(channel_final.bias)

    def shape_parameters(self) -> list[Tensor]:
        return [m.weight for m in self.spatial_att.modules() if isinstance(m, nn.Conv2d)]
