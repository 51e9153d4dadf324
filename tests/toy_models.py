"""Tiny attention models for unit tests: fast, random, with the output types users have."""

from __future__ import annotations

import torch
from torch import Tensor, nn

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
