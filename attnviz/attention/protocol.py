"""What makes a module spatial attention in attnviz.

A module is spatial attention because it says so: it has a class attribute
``attention_family`` and a method ``capture_attention(inputs, output)`` that turns the
arguments of a forward hook into an :class:`AttentionCapture`. New attention families
plug in by implementing these two names; the hooks and the pipeline never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass(frozen=True)
class AttentionCapture:
    """What one attention layer computed for one batch, already reduced to 2-D maps.

    weights:  the spatial weights M_s, (N, 1, h, w), values in [0, 1].
    weighted: the weighted features reduced over channels, mean |M_s * F|, (N, 1, h, w).
    """

    weights: Tensor
    weighted: Tensor

    @classmethod
    def from_weighted(cls, weights: Tensor, weighted_features: Tensor) -> AttentionCapture:
        # Reduce over channels at once: a capture keeps two small maps, never a feature map.
        return cls(weights.detach(), weighted_features.detach().abs().mean(dim=1, keepdim=True))


@runtime_checkable
class SpatialAttention(Protocol):
    attention_family: str

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        """Maps of this layer for the forward call a hook just saw."""
        ...


def is_spatial_attention(module: nn.Module) -> bool:
    return isinstance(module, SpatialAttention)


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All spatial attention layers of ``model`` in forward (registration) order."""
    return [(name, m) for name, m in model.named_modules() if name and is_spatial_attention(m)]
