"""timm's models by name: ``--model timm:NAME`` (timm is an optional extra, attnviz[timm]).

The model is built with ``pretrained=False``, so nothing is ever fetched: its weights come
from the user's ``--weights`` file, loaded like every other checkpoint (weights.py), or the
model refuses to run unless ``--random-init`` (random maps would mislead). Photos are
resized to the input size and normalised with the mean and std of the model's
``pretrained_cfg`` (timm's local table; ImageNet's when it has none).
"""

from __future__ import annotations

import difflib
from types import ModuleType

from torch import nn

from attnviz.errors import UsageError
from attnviz.models.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    WeightsSource,
    needs_weights,
)

PREFIX = "timm:"


def is_timm_model(name: str) -> bool:
    """Whether ``name`` names a timm model (``timm:NAME``)."""
    return name.startswith(PREFIX)


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise UsageError(
            "--model timm:…: timm is not installed; install it with `pip install attnviz[timm]` "
            "(or `uv sync --extra timm`)"
        ) from None
    return timm


def timm_model_spec(ref: str) -> ModelSpec:
    """The spec of ``ref`` (``timm:NAME``), whose attention is found by discovery and which needs
    --weights (or --random-init); raises UsageError where timm is not installed or has no such
    model."""
    name = ref[len(PREFIX) :]
    timm = _timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"--model {ref}: timm has no model {name!r}{hint}")
    cfg = timm.models.get_pretrained_cfg(name)
    size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    mean = tuple(cfg.mean) if cfg is not None and len(cfg.mean or ()) == 3 else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None and len(cfg.std or ()) == 3 else IMAGENET_STD

    def build() -> nn.Module:
        return timm.create_model(name, pretrained=False)

    return ModelSpec(
        ref, "timm", int(size[1]), WeightsSource.USER, f"timm's {name} (pretrained=False)",
        needs_weights(ref, f"a state dict of timm's {name}", build),
        mean, std,
        fixed_size=bool(cfg is not None and cfg.fixed_input_size), discover=True,
    )  # fmt: skip
