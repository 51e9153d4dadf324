"""A lightweight depthwise-separable spatial gate that sees every channel.

CBAM's gate sees only two summaries of the C channels (their mean and max). This gate
sees all of them at the cost of a depthwise-separable conv: a depthwise k x k conv
(one k x k filter per channel, C * k^2 weights) then a pointwise 1x1 conv to one map
(C weights), standardised per image, then an affine 1x1 (slope and bias):
``M = sigmoid(a * standardise(pointwise(depthwise(F))) + b)``, ``F_out = M * F``.
That is C * (k^2 + 1) + 2 parameters; a full k x k conv from C channels to C' hidden
channels, the way BAM's spatial branch sees the channels, needs C * C' * k^2.
The standardisation makes the map independent of the features' overall scale, which
varies a lot from image to image in deep layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture
from attnviz.models.cbam import standardize_per_image
from attnviz.models.gates import MultiplicativeGate


class DepthwiseSeparableGate(MultiplicativeGate):
    """Spatial gate: depthwise k x k over the channels, pointwise to one map, sigmoid."""

    attention_family = "lightweight-spatial"

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.depthwise = nn.Conv2d(
            channels, channels, kernel_size, padding=pad, groups=channels, bias=False
        )
        self.pointwise = nn.Conv2d(channels, 1, 1, bias=False)
        self.affine = nn.Conv2d(1, 1, 1)

    def attention_map(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.affine(standardize_per_image(self.pointwise(self.depthwise(x)))))

    def seed(self, slope: float, bias: float) -> None:
        # Depthwise identity and a uniform pointwise: the gate starts on the channel mean,
        # standardised, exactly as a seeded CBAM gate does.
        k = self.depthwise.kernel_size[0] // 2
        with torch.no_grad():
            self.depthwise.weight.zero_()
            self.depthwise.weight[:, 0, k, k] = 1.0
        nn.init.constant_(self.pointwise.weight, 1.0 / self.pointwise.in_channels)
        nn.init.constant_(self.affine.weight, slope)
        nn.init.constant_(self.affine.bias, bias)

    def shape_parameters(self) -> list[nn.Parameter]:
        return [self.depthwise.weight, self.pointwise.weight, self.affine.weight]

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        features = inputs[0]
        weights = self.attention_map(features)
        return AttentionCapture.from_weighted(weights, weights * features)
