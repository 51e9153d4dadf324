"""The shipped ImageNet class names are torchvision's, in its order."""

from __future__ import annotations

import subprocess
import sys

from attnviz.models.imagenet import imagenet_categories


def test_class_names_match_torchvisions_metadata() -> None:
    from torchvision.models import ResNet18_Weights

    assert imagenet_categories() == tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def test_naming_classes_imports_no_torchvision() -> None:
    code = (
        "import sys; from attnviz.models.imagenet import imagenet_categories; "
        "imagenet_categories(); print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
