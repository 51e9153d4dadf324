"""Pyramid spatial attention: one spatial map fused from the channel pools at several scales.

``P = standardise([mean_c F; max_c F])`` (per image, as in attnviz's CBAM gates); for each
scale s (1, 1/2, 1/4 by default) P is average-pooled to that scale, a k x k conv turns it
into one logit map L_s, which is upsampled (bilinear) to the input's size; a learnt 1x1
conv fuses the L_s into one logit map l, and M is l's standardised sigmoid
(``gates.StandardisedGate``), ``F_out = (floor + (1 - floor) M) * F``. Coarse scales see
wide context cheaply; the fine scale keeps detail.

The capture's weights are the fused map M; its parts hold each scale's own map (L_s
through the same standardised sigmoid) at the input's resolution, named "scale 1",
"scale 1/2", "scale 1/4".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.models.gates import (
    StandardisedGate,
    channel_pool,
    seed_centre_tap,
    standardize_per_image,
)


def scale_name(divisor: int) -> str:
    """The part's name of the scale 1 / ``divisor``: "scale 1", "scale 1/2", ..."""
    return "scale 1" if divisor == 1 else f"scale 1/{divisor}"


class PyramidSpatialAttention(StandardisedGate):
    """Spatial attention fused from channel pools average-pooled to several scales."""

    attention_family = "pyramid-spatial"

    def __init__(self, divisors: Sequence[int] = (1, 2, 4), kernel_size: int = 3) -> None:
        super().__init__()
        if not divisors or any(d < 1 for d in divisors):
            raise ValueError(f"scale divisors must be positive integers, got {divisors}")
        self.divisors = tuple(divisors)
        # No biases: the standardisation removes the logits' level.
        self.scales = nn.ModuleList(
            nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
            for _ in self.divisors
        )
        self.fuse = nn.Conv2d(len(self.divisors), 1, 1, bias=False)

    def part_logits(self, x: Tensor) -> dict[str, Tensor]:
        """Each scale's logit map L_s, upsampled to x's size: (N, 1, H, W) each."""
        pooled = standardize_per_image(channel_pool(x, "avg-max"))
        h, w = x.shape[-2:]
        logits = {}
        for divisor, conv in zip(self.divisors, self.scales, strict=True):
            # ceil: a 7x7 map still has a 2x2 grid at 1/4, never an empty one.
            size = (math.ceil(h / divisor), math.ceil(w / divisor))
            coarse = pooled if divisor == 1 else F.adaptive_avg_pool2d(pooled, size)
            logit = conv(coarse)
            if logit.shape[-2:] != (h, w):
                logit = F.interpolate(logit, (h, w), mode="bilinear", align_corners=False)
            logits[scale_name(divisor)] = logit
        return logits

    def logits(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat(list(self.part_logits(x).values()), dim=1))

    def seed(self, slope: float) -> None:
        # Every scale starts as the (pooled) channel mean and the fusion averages them, so
        # the fused map starts from a smoothed standardised channel mean.
        for conv in self.convs():
            seed_centre_tap(conv, 0, slope)
        nn.init.constant_(self.fuse.weight, 1.0 / len(self.divisors))

    def shape_parameters(self) -> list[Tensor]:
        return [conv.weight for conv in self.convs()] + [self.fuse.weight]

    def convs(self) -> list[nn.Conv2d]:
        return [cast(nn.Conv2d, conv) for conv in self.scales]
