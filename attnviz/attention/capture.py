"""Which layers are attention, and the forward hooks that capture their maps inside a
``with`` block.

Layers are attention through the protocol, an adapter, or discovery (found by what they
compute on a probe pass: :func:`attnviz.attention.discovery.discover`). ``--layer NAME`` may
also name any other module by its exact name (a user selection): its output must be a one-channel
spatial map (N, 1, h, w), shown as the weight map, through a sigmoid when the image's
values fall outside [0, 1] (logits); the weighted map is ``|map ⊗ x|`` averaged over
channels when the module's input ``x`` has the map's size, else the map itself.
"""

from __future__ import annotations

import difflib
import fnmatch
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

from attnviz.attention.adapters import adapter_for
from attnviz.attention.discovery import describe, discovered, reads_query_point
from attnviz.attention.hooks import removing
from attnviz.attention.protocol import (
    AttentionCapture,
    CaptureFn,
    Capturer,
    SpatialAttention,
    keeping_maps,
    on_forward,
)
from attnviz.attention.tap import attach_discovered
from attnviz.errors import UsageError


def capturer_for(module: nn.Module) -> Capturer | None:
    """The module's own protocol, else an adapter for its class, else None."""
    if isinstance(module, SpatialAttention):
        return Capturer(
            module.attention_family,
            "protocol",
            on_forward(module, module.capture_attention),
            reads_query=getattr(module, "reads_query_point", False),
        )
    adapter = adapter_for(module)
    if adapter is None:
        return None
    return Capturer(
        adapter.family,
        "adapter",
        lambda sink: adapter.attach(module, sink),
        adapter.covers,
        adapter.reads_query,
    )


def declared_layers(model: nn.Module) -> dict[str, Capturer]:
    """Layers that say they are attention (protocol) or that an adapter knows, in forward
    (registration) order. A map is never listed twice: a module that its parent captures
    sets ``attention_listed = False``, and an adapter names the submodules it reads."""
    found: dict[str, Capturer] = {}
    covered: set[str] = set()
    for name, module in model.named_modules():
        if not name or name in covered or not getattr(module, "attention_listed", True):
            continue
        capturer = capturer_for(module)
        if capturer is not None:
            found[name] = capturer
            covered.update(f"{name}.{child}" for child in capturer.covers)
    return found


# Listing layers checks every module against the protocol: worth doing once per model, not
# once per batch. A model that gains or loses modules, or that discovery ran on again, is
# listed anew (a module swapped for another, the count unchanged, is not noticed).
_LISTED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, object], dict[str, Capturer]]] = (
    weakref.WeakKeyDictionary()
)


def layer_capturers(model: nn.Module) -> dict[str, Capturer]:
    """Every spatial attention layer of ``model`` and how it is read, in forward order:
    declared ones, and those discovery found (when it ran on this model)."""
    key = (sum(1 for _ in model.modules()), discovered(model))
    listed = _LISTED.get(model)
    if listed is None or listed[0][0] != key[0] or listed[0][1] is not key[1]:
        listed = (key, _list_layers(model))
        _LISTED[model] = listed
    return dict(listed[1])


def _list_layers(model: nn.Module) -> dict[str, Capturer]:
    found = declared_layers(model)
    discovery = discovered(model)
    if discovery is not None:
        modules = dict(model.named_modules())
        for name, recipe in discovery.layers.items():
            if name in found or name not in modules:
                continue
            module = modules[name]
            found[name] = Capturer(
                recipe.pattern,
                "discovered",
                partial(attach_discovered, module, recipe),
                reads_query=reads_query_point(recipe),
                map_is=describe(recipe),
            )
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        found = dict(sorted(found.items(), key=lambda item: order[item[0]]))
    return found


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All spatial attention layers of ``model`` in forward (registration) order."""
    modules = dict(model.named_modules())
    return [(name, modules[name]) for name in layer_capturers(model)]


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
        raise UsageError(no_attention_message(model))
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


def no_attention_message(model: nn.Module) -> str:
    """What was found instead of spatial attention, and what to do."""
    discovery = discovered(model)
    channel = discovery.channel_only if discovery is not None else ()
    if channel:
        shown = ", ".join(f"{name}" for name, _ in channel[:3])
        more = f" and {len(channel) - 3} more" if len(channel) > 3 else ""
        found = f"channel attention only ({channel[0][1]} at {shown}{more})"
    else:
        found = "no spatial attention layers"
    return (
        f"this model has {found}: nothing to capture as a spatial map; try --method gradcam, "
        "or name a module whose output is a one-channel map with --layer NAME"
    )


def user_selected(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that are not attention layers (protocol, adapter or discovered)."""
    layers = layer_capturers(model)
    return [name for name in names if name not in layers]


def reads_query(model: nn.Module, names: Sequence[str]) -> bool:
    """Whether any of the layers ``names`` shows one query point's attention (--query)."""
    layers = layer_capturers(model)
    return any(name in layers and layers[name].reads_query for name in names)


def layer_capturer(model: nn.Module, name: str) -> Capturer:
    """How the layer ``name`` is read: as attention, else as a user selection."""
    found = layer_capturers(model).get(name)
    if found is not None:
        return found
    module = dict(model.named_modules())[name]
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
    names = select_layers(model, layers)
    with capturing({name: layer_capturer(model, name) for name in names}) as captured:
        yield captured


@contextmanager
def capturing(capturers: Mapping[str, Capturer]) -> Iterator[dict[str, AttentionCapture]]:
    """:func:`capture_maps` for layers already resolved to their capturers: what a loop over
    many batches uses, so that the model's modules are not searched again for each one."""
    captured: dict[str, AttentionCapture] = {}
    with removing() as handles:
        for name, capturer in capturers.items():
            handles += capturer.attach(partial(captured.__setitem__, name))
        with keeping_maps():
            yield captured
