"""ImageNet-1k class names in the usual index order, shipped as data.

The list is torchvision's ImageNet metadata (`ResNet18_Weights.IMAGENET1K_V1.meta
["categories"]`, checked equal by tests/test_imagenet.py), kept as a text file so that naming
a class does not import torchvision (about 1.8 s at start-up).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1,000 class names, by class index (read once from imagenet_classes.txt)."""
    text = files("attnviz.models").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(text.splitlines())
    assert len(names) == 1000, "attnviz/models/imagenet_classes.txt must list 1,000 classes"
    return names
