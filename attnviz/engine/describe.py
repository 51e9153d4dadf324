"""Describing a model's attention layers without weights: shapes come from one dry forward."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from attnviz.attention import attention_layers
from attnviz.attention.capture import layer_capturer, select_layers
from attnviz.attention.hooks import on_output, removing
from attnviz.attention.protocol import AttentionCapture, Capturer, FoundBy, Sink
from attnviz.models import find_attention, load_model
from attnviz.models.registry import get_spec


@dataclass(frozen=True)
class LayerInfo:
    """One row of ``attnviz layers``: a layer's name and family, its input's and its map's shapes
    (without the batch axis, from the dry forward), and how it was found."""

    name: str
    family: str
    feature: tuple[int, ...]
    map: tuple[int, ...]
    found_by: FoundBy
    map_is: str = ""  # discovered layers: what the map shows (their family is the pattern)


def describe_layers(
    model_name: str,
    size: int | None = None,
    layer: str | None = None,
    weights: Path | None = None,
) -> tuple[list[LayerInfo], str | None]:
    """The attention layers of a model, and the name of its default layer.

    ``layer`` (as ``--layer``) adds the modules it names that are not attention layers
    (user selections), checked on the dry forward like the others. With ``weights`` the
    model is loaded with them (so a file that does not fit says so); without, its structure
    is enough: shapes do not depend on weights.
    """
    spec = get_spec(model_name)
    size = size or spec.input_size
    if weights is not None:
        net = load_model(model_name, weights, device="cpu", size=size).net
    else:
        net = spec.build(True).eval()
        if spec.discover:
            find_attention(net, size)
    modules = dict(net.named_modules())
    names = [name for name, _ in attention_layers(net)]
    if layer is not None:
        chosen = set(select_layers(net, layer))
        names = [name for name in modules if name in chosen or name in names]
    if not names:
        select_layers(net, spec.default_layer)  # raises: nothing to list, and what to do
    capturers: dict[str, Capturer] = {n: layer_capturer(net, n) for n in names}
    features: dict[str, tuple[int, ...]] = {}
    maps: dict[str, tuple[int, ...]] = {}

    def feature_shape(name: str, inputs: tuple[Tensor, ...], _output: object) -> None:
        features[name] = tuple(inputs[0].shape[1:])

    def sink(name: str) -> Sink:
        def keep(capture: AttentionCapture) -> None:
            maps[name] = tuple(capture.weights.shape[1:])

        return keep

    with removing() as handles, torch.inference_mode():
        for name in names:
            handles.append(on_output(modules[name], partial(feature_shape, name)))
            handles += capturers[name].attach(sink(name))
        net(torch.zeros(1, 3, size, size))
    default = select_layers(net, spec.default_layer)[0] if attention_layers(net) else None
    rows = [
        LayerInfo(
            n,
            capturers[n].family,
            features[n],
            maps[n],
            capturers[n].found_by,
            capturers[n].map_is,
        )  # fmt: skip
        for n in names
        if n in maps
    ]
    return rows, default
