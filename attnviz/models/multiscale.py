"""Multi-scale (dilated) spatial attention: parallel dilated convs over the channel pools.

``P = standardise([mean_c F; max_c F])``; branches ``B_d = conv3x3_dilation_d(P)`` for
d in (1, 2, 3) see neighbourhoods of 3, 5 and 7 positions with 18 weights each; their sum
plus one bias b is the logit map: ``M = sigmoid(B_1 + B_2 + B_3 + b)``, ``F_out = M * F``.

The capture's weights are M; its parts hold each branch's map sigmoid(B_d + b), named
"dilation d" (what that neighbourhood size alone would keep).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture
from attnviz.models.cbam import channel_pool, standardize_per_image
from attnviz.models.gates import MultiplicativeGate, seed_centre_tap


class DilatedSpatialAttention(MultiplicativeGate):
    """Spatial attention from the sum of parallel dilated 3x3 convs over [mean; max]."""

    attention_family = "multiscale-spatial"

    def __init__(self, dilations: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"dilations must be positive integers, got {dilations}")
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(
            nn.Conv2d(2, 1, 3, padding=d, dilation=d, bias=False) for d in self.dilations
        )
        # One bias for the sum: per-branch biases would only add up to it.
        self.bias = nn.Parameter(torch.zeros(()))

    def branch_logits(self, x: Tensor) -> list[Tensor]:
        pooled = standardize_per_image(channel_pool(x, "avg-max"))
        return [branch(pooled) for branch in self.branches]

    def attention_map(self, x: Tensor) -> Tensor:
        return torch.sigmoid(torch.stack(self.branch_logits(x)).sum(0) + self.bias)

    def seed(self, slope: float, bias: float) -> None:
        # The centre taps of all branches read the same position: sharing the slope among
        # them starts the sum at slope * mean, and every branch's part at a real map.
        for branch in self.branches:
            seed_centre_tap(branch, 0, slope / len(self.branches))
        nn.init.constant_(self.bias, bias)

    def shape_parameters(self) -> list[nn.Parameter]:
        return [branch.weight for branch in self.branches]

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        features = inputs[0]
        logits = self.branch_logits(features)
        weights = torch.sigmoid(torch.stack(logits).sum(0) + self.bias)
        parts = {
            f"dilation {d}": torch.sigmoid(logit + self.bias)
            for d, logit in zip(self.dilations, logits, strict=True)
        }
        return AttentionCapture.of_gate(weights, features, parts)
