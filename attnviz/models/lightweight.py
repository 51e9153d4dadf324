"""A lightweight depthwise-separable spatial gate that sees every channel.

CBAM's gate sees only two summaries of the C channels (their mean and max). This gate
sees all of them at the cost of a depthwise-separable conv: a depthwise k x k conv
(one k x k filter per channel, C * k^2 weights) then a pointwise 1x1 conv to one logit
map l (C weights); M is l's standardised sigmoid (``gates.StandardisedGate``) and
``F_out = (floor + (1 - floor) M) * F``. That is C * (k^2 + 1) parameters; a full k x k
conv from C channels to C' hidden channels, the way BAM's spatial branch sees the
channels, needs C * C' * k^2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnviz.models.gates import StandardisedGate


class DepthwiseSeparableGate(StandardisedGate):
    """Spatial gate: depthwise k x k over the channels, pointwise to one map."""

    attention_family = "lightweight-spatial"

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.depthwise = nn.Conv2d(
            channels, channels, kernel_size, padding=pad, groups=channels, bias=False
        )
        self.pointwise = nn.Conv2d(channels, 1, 1, bias=False)

    def logits(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))

    def seed(self, slope: float) -> None:
        # Depthwise identity and a uniform pointwise: the gate starts on the channel mean
        # (whose scale and level the standardisation removes), as a seeded CBAM gate does.
        k = self.depthwise.kernel_size[0] // 2
        with torch.no_grad():
            self.depthwise.weight.zero_()
            self.depthwise.weight[:, 0, k, k] = 1.0
        nn.init.constant_(self.pointwise.weight, slope / self.pointwise.in_channels)

    def shape_parameters(self) -> list[Tensor]:
        return [self.depthwise.weight, self.pointwise.weight]
