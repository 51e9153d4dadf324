"""Pyramid spatial attention: one spatial map fused from the channel pools at several scales.

``P = standardise([mean_c F; max_c F])`` (per image, as in attnviz's CBAM gates); for each
scale s (1, 1/2, 1/4 by default) P is average-pooled to that scale, a k x k conv turns it
into one logit map L_s, which is upsampled (bilinear) to the input's size; a learnt 1x1
conv fuses the L_s into one logit map, and ``M = sigmoid(fuse(L_1, L_1/2, L_1/4))``,
``F_out = M * F``. Coarse scales see wide context cheaply; the fine scale keeps detail.

The capture's weights are the fused map M; its parts hold each scale's own map
sigmoid(L_s) at the input's resolution, named "scale 1", "scale 1/2", "scale 1/4".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture
from attnviz.models.cbam import channel_pool, standardize_per_image
from attnviz.models.gates import MultiplicativeGate, seed_centre_tap


def scale_name(divisor: int) -> str:
    return "scale 1" if divisor == 1 else f"scale 1/{divisor}"


class PyramidSpatialAttention(MultiplicativeGate):
    """Spatial attention fused from channel pools average-pooled to several scales."""

    attention_family = "pyramid-spatial"

    def __init__(self, divisors: Sequence[int] = (1, 2, 4), kernel_size: int = 3) -> None:
        super().__init__()
        if not divisors or any(d < 1 for d in divisors):
            raise ValueError(f"scale divisors must be positive integers, got {divisors}")
        self.divisors = tuple(divisors)
        self.scales = nn.ModuleList(
            nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2) for _ in self.divisors
        )
        self.fuse = nn.Conv2d(len(self.divisors), 1, 1)

    def scale_logits(self, x: Tensor) -> list[Tensor]:
        """Each scale's logit map L_s, upsampled to x's size: (N, 1, H, W) each."""
        pooled = standardize_per_image(channel_pool(x, "avg-max"))
        h, w = x.shape[-2:]
        logits = []
        for divisor, conv in zip(self.divisors, self.scales, strict=True):
            # ceil: a 7x7 map still has a 2x2 grid at 1/4, never an empty one.
            size = (math.ceil(h / divisor), math.ceil(w / divisor))
            coarse = pooled if divisor == 1 else F.adaptive_avg_pool2d(pooled, size)
            logit = conv(coarse)
            if logit.shape[-2:] != (h, w):
                logit = F.interpolate(logit, (h, w), mode="bilinear", align_corners=False)
            logits.append(logit)
        return logits

    def maps(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(the fused map M, each scale's sigmoid(L_s)), all (N, 1, H, W) in (0, 1)."""
        logits = self.scale_logits(x)
        fused = torch.sigmoid(self.fuse(torch.cat(logits, dim=1)))
        return fused, [torch.sigmoid(logit) for logit in logits]

    def attention_map(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fuse(torch.cat(self.scale_logits(x), dim=1)))

    def seed(self, slope: float, bias: float) -> None:
        # Every scale starts as the (pooled) channel mean and the fusion averages them, so
        # the fused map starts as a smoothed sigmoid(slope * mean + bias).
        for conv in self.scales:
            seed_centre_tap(conv, 0, slope)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.fuse.weight, 1.0 / len(self.divisors))
        nn.init.constant_(self.fuse.bias, bias)

    def shape_parameters(self) -> list[nn.Parameter]:
        return [conv.weight for conv in self.scales] + [self.fuse.weight]

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        features = inputs[0]
        fused, per_scale = self.maps(features)
        parts = dict(zip(map(scale_name, self.divisors), per_scale, strict=True))
        return AttentionCapture.of_gate(fused, features, parts)
