"""Multi-scale (dilated) spatial attention: parallel dilated convs over the channel pools.

``P = standardise([mean_c F; max_c F])``; branches ``B_d = conv3x3_dilation_d(P)`` for
d in (1, 2, 3) see neighbourhoods of 3, 5 and 7 positions with 18 weights each; their sum
is the logit map l, M is its standardised sigmoid (``gates.StandardisedGate``) and
``F_out = (floor + (1 - floor) M) * F``.

The capture's weights are M; its parts hold each branch's own map (B_d through the same
standardised sigmoid), named "dilation d": what that neighbourhood size alone would keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from attnviz.models.gates import (
    StandardisedGate,
    channel_pool,
    seed_centre_tap,
    standardize_per_image,
)


class DilatedSpatialAttention(StandardisedGate):
    """Spatial attention from the sum of parallel dilated 3x3 convs over [mean; max]."""

    attention_family = "multiscale-spatial"

    def __init__(self, dilations: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"dilations must be positive integers, got {dilations}")
        self.dilations = tuple(dilations)
        # No biases: the standardisation removes the logits' level.
        self.branches = nn.ModuleList(
            nn.Conv2d(2, 1, 3, padding=d, dilation=d, bias=False) for d in self.dilations
        )

    def part_logits(self, x: Tensor) -> dict[str, Tensor]:
        pooled = standardize_per_image(channel_pool(x, "avg-max"))
        return {
            f"dilation {d}": branch(pooled)
            for d, branch in zip(self.dilations, self.branches, strict=True)
        }

    def logits(self, x: Tensor) -> Tensor:
        return torch.stack(list(self.part_logits(x).values())).sum(0)

    def seed(self, slope: float) -> None:
        # The centre taps of all branches read the same position: sharing the slope among
        # them starts the sum at slope * mean, and every branch's part at a real map.
        for branch in self.convs():
            seed_centre_tap(branch, 0, slope / len(self.branches))

    def shape_parameters(self) -> list[Tensor]:
        return [branch.weight for branch in self.convs()]

    def convs(self) -> list[nn.Conv2d]:
        return [cast(nn.Conv2d, branch) for branch in self.branches]
