"""Describing a model's attention layers without weights: shapes come from one dry forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnviz.attention import attention_layers
from attnviz.attention.protocol import capturer_for
from attnviz.models.registry import get_spec


@dataclass(frozen=True)
class LayerInfo:
    name: str
    family: str
    feature: tuple[int, ...]
    map: tuple[int, ...]
    found_by: str  # "protocol" or "adapter"


def describe_layers(model_name: str, size: int | None = None) -> tuple[list[LayerInfo], str]:
    """The attention layers of a built-in model, and the name of its default layer."""
    from attnviz.attention import select_layers

    spec = get_spec(model_name)
    net = spec.build(True).eval()  # structure only: shapes do not depend on weights
    size = size or spec.input_size
    layers = attention_layers(net)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    capturers = {n: capturer_for(m) for n, m in layers}

    def hook_for(name: str):
        def hook(module, inputs, output) -> None:  # noqa: ANN001
            maps = capturers[name].capture(inputs, output)  # type: ignore[union-attr]
            shapes[name] = (tuple(inputs[0].shape[1:]), tuple(maps.weights.shape[1:]))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    default = select_layers(net, spec.default_layer)[0]
    rows = [
        LayerInfo(n, capturers[n].family, *shapes[n], capturers[n].found_by)  # type: ignore[union-attr]
        for n, _ in layers
    ]
    return rows, default
