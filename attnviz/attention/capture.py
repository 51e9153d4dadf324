"""Forward hooks that capture attention maps, alive only inside a ``with`` block.

Layers are attention through the protocol or an adapter. ``--layer NAME`` may also name any
other module by its exact name (a user selection): its output must be a one-channel
spatial map (N, 1, h, w), shown as the weight map, through a sigmoid when the image's
values fall outside [0, 1] (logits); the weighted map is ``|map ⊗ x|`` averaged over
channels when the module's input ``x`` has the map's size, else the map itself.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from attnviz.attention.protocol import (
    AttentionCapture,
    CaptureFn,
    Capturer,
    Sink,
    attention_layers,
    capturer_for,
    on_forward,
)
from attnviz.errors import UsageError


def _parse_index(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        return None


def select_layers(model: nn.Module, selector: str | Sequence[str] | None = "-1") -> list[str]:
    """Names of the attention layers picked by ``selector``, in forward order.

    A selector is ``all``, a layer name, a glob (``attention.*``), an index (``-1`` is the
    deepest layer) or several of these separated by commas. The exact name of a module that
    is not attention selects it too (a user selection, see the module's docstring).
    """
    available = [name for name, _ in attention_layers(model)]
    modules = [name for name, _ in model.named_modules() if name]
    tokens = selector.split(",") if isinstance(selector, str) else list(selector or ["-1"])
    tokens = [t.strip() for t in tokens if t.strip()]
    if not available and all(t == "all" or _parse_index(t) is not None for t in tokens):
        raise UsageError(
            "this model has no spatial attention layers to capture; name a module whose "
            "output is a one-channel map with --layer NAME"
        )
    chosen: set[str] = set()
    for token in tokens:
        if token == "all":
            chosen.update(available)
            continue
        index = _parse_index(token)
        # A name first: nn.Sequential's children are called "0", "1" ...
        if index is not None and token not in available:
            if not -len(available) <= index < len(available):
                raise UsageError(
                    f"layer index {index} is out of range: this model has {len(available)} "
                    f"attention layers ({', '.join(available)})"
                )
            chosen.add(available[index])
            continue
        matches = [n for n in available if n == token or fnmatch.fnmatchcase(n, token)]
        if not matches and token in modules:
            matches = [token]
        if not matches:
            close = difflib.get_close_matches(token, available or modules, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(
                f"no attention layer matches {token!r}{hint}; available: {', '.join(available)}"
                " (or the exact name of a module whose output is a one-channel map)"
            )
        chosen.update(matches)
    return [name for name in modules if name in chosen]


def user_selected(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that are neither protocol nor adapter layers."""
    modules = dict(model.named_modules())
    return [name for name in names if capturer_for(modules[name]) is None]


def reads_query(model: nn.Module, names: Sequence[str]) -> bool:
    """Whether any of the layers ``names`` shows one query point's attention (--query)."""
    modules = dict(model.named_modules())
    return any(
        (capturer := capturer_for(modules[name])) is not None and capturer.reads_query
        for name in names
    )


def layer_capturer(name: str, module: nn.Module) -> Capturer:
    """How the layer ``name`` is read: its protocol or adapter, else as a user selection."""
    found = capturer_for(module)
    if found is not None:
        return found
    return Capturer("user selection", "user selection", on_forward(module, _one_channel(name)))


def _one_channel(name: str) -> CaptureFn:
    def capture(inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        if not isinstance(output, Tensor) or output.dim() != 4 or output.shape[1] != 1:
            raise UsageError(
                f"--layer {name}: its output is {shape}, not a one-channel spatial map "
                "(N, 1, h, w); pick an attention layer (see `attnviz layers`) or such a module"
            )
        weights = as_weight_map(output.detach().float())
        x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        if x is not None and x.dim() == 4 and x.shape[2:] == weights.shape[2:]:
            return AttentionCapture.from_weighted(weights, weights * x.detach())
        return AttentionCapture(weights, weights)

    return capture


def as_weight_map(output: Tensor) -> Tensor:
    """A selected module's one-channel output as weights in [0, 1]: as it is when each image's
    values lie in [0, 1], else through a sigmoid (logits). Decided per image, so an image's
    map never depends on the other photos of its batch."""
    outside = (output.amin(dim=(1, 2, 3)) < 0) | (output.amax(dim=(1, 2, 3)) > 1)
    return torch.where(outside[:, None, None, None], torch.sigmoid(output), output)


@contextmanager
def capture_maps(
    model: nn.Module, layers: str | Sequence[str] | None = "-1"
) -> Iterator[dict[str, AttentionCapture]]:
    """Capture the maps of the chosen layers during forward passes inside the block.

    The yielded dict maps layer name to its latest :class:`AttentionCapture`. Hooks are
    removed when the block ends, also on error; the model's own output is never touched,
    so models returning tuples or dicts work as they are.
    """
    modules = dict(model.named_modules())
    names = select_layers(model, layers)
    captured: dict[str, AttentionCapture] = {}
    handles: list[RemovableHandle] = []

    def sink_for(name: str) -> Sink:
        return lambda capture: captured.__setitem__(name, capture)

    try:
        for name in names:
            handles += layer_capturer(name, modules[name]).attach(sink_for(name))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
