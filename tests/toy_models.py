"""Tiny attention models for unit tests: fast, random, with the output types users have."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from attnviz.attention.protocol import QUERY_POINTS, AttentionCapture
from attnviz.models.cbam import SpatialGate


class ToyGated(nn.Module):
    """conv -> gate -> conv -> gate -> pooled logits; ``output`` picks tensor, tuple or dict."""

    def __init__(self, output: str = "tensor") -> None:
        super().__init__()
        self.output = output
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.gate1 = SpatialGate(7)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.gate2 = SpatialGate(3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor] | dict[str, Tensor]:
        f = self.gate2(self.conv2(torch.relu(self.gate1(self.conv1(x)))))
        logits = self.fc(f.mean(dim=(2, 3)))
        if self.output == "tuple":
            return logits, f
        if self.output == "dict":
            return {"features": f, "logits": logits}
        return logits


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class ToyPointAttention(nn.Module):
    """Attention read from a point, like a non-local block's: its map is 1 at the query cell
    and 0 elsewhere; the query is ``--query`` (QUERY_POINTS) or, by default, the grid's centre."""

    attention_family = "toy-point"
    reads_query_point = True

    def forward(self, x: Tensor) -> Tensor:
        return x

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:  # noqa: ARG002
        features = inputs[0]
        n, _, h, w = features.shape
        points = QUERY_POINTS.get()
        if points is None:
            points = torch.full((n, 2), 0.5)
        col = (points[:, 0] * w).long().clamp(0, w - 1)
        row = (points[:, 1] * h).long().clamp(0, h - 1)
        weights = torch.zeros(n, 1, h, w)
        weights[torch.arange(n), 0, row, col] = 1.0
        marker = torch.stack([(col + 0.5) / w, (row + 0.5) / h], dim=1)
        capture = AttentionCapture.from_weighted(weights, weights * features)
        return replace(
            capture,
            marker=marker,
            parts={"flat": (torch.full_like(weights, 0.5), capture.weighted)},
        )


def toy_point_model() -> nn.Module:
    """Photo -> 8 x 8 grid -> point attention -> logits (a --model file.py:factory)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(8), ToyPointAttention(), nn.Flatten(), nn.Linear(3 * 64, 10)
    )
