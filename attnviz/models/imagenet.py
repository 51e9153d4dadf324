"""ImageNet-1k class names, from torchvision's metadata (offline, no download)."""

from __future__ import annotations

from functools import cache


@cache
def imagenet_categories() -> tuple[str, ...]:
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
