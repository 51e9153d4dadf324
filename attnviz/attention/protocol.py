"""What makes a module spatial attention in attnviz.

A module is spatial attention because it says so: it has a class attribute
``attention_family`` and a method ``capture_attention(inputs, output)`` that turns the
arguments of a forward hook into an :class:`AttentionCapture`. New attention families
plug in by implementing these two names; the hooks and the pipeline never change.
Classes of other projects that cannot say so get an adapter (attention/adapters.py);
modules that say nothing are found by what they compute (attention/discovery.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from attnviz.attention.hooks import Removable, on_output


@dataclass(frozen=True)
class AttentionCapture:
    """What one attention layer computed for one batch, already reduced to 2-D maps.

    weights:  the spatial weights M_s, (N, 1, h, w), values in [0, 1].
    weighted: the weighted features reduced over channels, mean |M_s * F|, (N, 1, h', w'):
              usually the map's grid; where the module weights features on another grid
              (the attention pool weights the head's 7 x 7), that grid.
    parts:    named sub-maps a figure shows on request (``--parts``): a ViT's heads, a
              pyramid's scales, a non-local block's mean received attention. Each is a
              (weights, weighted) pair shaped like the two above (its own h, w allowed).
    channels: the per-channel weights (N, C) in [0, 1] of a channel gate that ran with
              this map (CBAM's), drawn as a strip under the map.
    marker:   the point the map was read from, (N, 2) as (x, y) fractions of the map's
              width and height (a non-local block's query), marked on the map panel.
    applied:  what multiplies the features when that is not M itself, in terms of M
              (``"0.5 + 0.5 M"``, ``"1 + M"``), for the caption; None: F_out = M * F.
    """

    weights: Tensor
    weighted: Tensor
    parts: Mapping[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    channels: Tensor | None = None
    marker: Tensor | None = None
    applied: str | None = None

    @classmethod
    def from_weighted(
        cls, weights: Tensor, weighted_features: Tensor, applied: str | None = None
    ) -> AttentionCapture:
        # Reduce over channels at once: a capture keeps two small maps, never a feature map.
        weighted = weighted_features.detach().abs().mean(dim=1, keepdim=True)
        return cls(weights.detach(), weighted, applied=applied)

    @classmethod
    def of_gate(
        cls,
        weights: Tensor,
        features: Tensor,
        parts: Mapping[str, Tensor] | None = None,
        applied: Callable[[Tensor], Tensor] | None = None,
        caption: str | None = None,
    ) -> AttentionCapture:
        """A gate's capture: its map M and |applied(M) * F|, and each part's map M_p
        (N, 1, h, w) with its own |applied(M_p) * F|. ``applied`` is what multiplies the
        features given a map (M itself by default), ``caption`` says it in words."""

        def weighted(m: Tensor) -> Tensor:
            scale = m if applied is None else applied(m)
            return (scale * features).detach().abs().mean(dim=1, keepdim=True)

        return cls(
            weights.detach(),
            weighted(weights),
            parts={name: (m.detach(), weighted(m)) for name, m in (parts or {}).items()},
            applied=caption,
        )


@runtime_checkable
class SpatialAttention(Protocol):
    """What makes a module spatial attention: its family's name, and a capture of its maps from
    a forward hook's arguments."""

    attention_family: str

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        """Maps of this layer for the forward call a hook just saw."""
        ...


# Query points for attention that is read from a point (a non-local block's HW x HW map):
# (N, 2) as (x, y) fractions of each photo's width and height, or None for the module's own
# choice. The pipeline sets it around a forward pass (``--query``); captures read it. A module
# whose map reads it sets ``reads_query_point = True`` (adapters: ``reads_query``), so that
# --query is refused for layers that would ignore it.
QUERY_POINTS: ContextVar[Tensor | None] = ContextVar("attnviz_query_points", default=None)


@contextmanager
def query_points(points: Tensor | None) -> Iterator[None]:
    """Sets the query points (QUERY_POINTS) for the block: (N, 2) as (x, y) fractions, or None."""
    token = QUERY_POINTS.set(points)
    try:
        yield
    finally:
        QUERY_POINTS.reset(token)


# Maps a module computed in its own forward pass, handed to its capture hook while
# capture_maps listens, so that the hook reads them instead of computing them a second time.
# Keyed by module and tied to the input they were computed from: a capture of another input
# computes its own. Each capture_maps block has its own dict (a ContextVar).
KEPT_MAPS: ContextVar[dict[int, tuple[Tensor, dict[str, Tensor]]] | None] = ContextVar(
    "attnviz_kept_maps", default=None
)


@contextmanager
def keeping_maps() -> Iterator[None]:
    """A block in which forwards hand their maps to their captures (:func:`keep_maps`), in a
    dict of its own."""
    token = KEPT_MAPS.set({})
    try:
        yield
    finally:
        KEPT_MAPS.reset(token)


def keep_maps(module: nn.Module, given: Tensor, **tensors: Tensor) -> None:
    """In a layer's forward: hand what it just computed from ``given`` (its first input)
    to its capture, if one listens."""
    kept = KEPT_MAPS.get()
    if kept is not None:
        kept[id(module)] = (given, {k: v.detach() for k, v in tensors.items()})


def kept_maps(module: nn.Module, given: Tensor) -> dict[str, Tensor] | None:
    """In a layer's capture: what its forward kept for this very input (None: compute it)."""
    kept = KEPT_MAPS.get()
    found = None if kept is None else kept.pop(id(module), None)
    return found[1] if found is not None and found[0] is given else None


def query_cells(default: Tensor, height: int, width: int) -> Tensor:
    """Flat indices (N,) of each photo's query cell: ``--query`` where given, else ``default``.

    The query points may be fewer than the batch (a batch padded to a fixed size): the rest
    keep their default.
    """
    points = QUERY_POINTS.get()
    if points is None:
        return default
    cells = default.clone()
    given = points[: len(default)].to(default.device)
    cols = (given[:, 0] * width).floor().long().clamp(0, width - 1)
    rows = (given[:, 1] * height).floor().long().clamp(0, height - 1)
    cells[: len(given)] = rows * width + cols
    return cells


def cell_marker(cells: Tensor, height: int, width: int) -> Tensor:
    """Flat cells (N,) of a height × width grid as (x, y) fractions of its centre: a marker."""
    return torch.stack([(cells % width + 0.5) / width, (cells // width + 0.5) / height], 1).float()


def is_spatial_attention(module: nn.Module) -> bool:
    """Whether ``module`` captures its own maps (the SpatialAttention protocol); adapted and
    discovered layers are found otherwise."""
    return isinstance(module, SpatialAttention)


FoundBy = Literal["protocol", "adapter", "discovered", "user selection"]
CaptureFn = Callable[[tuple[Tensor, ...], object], AttentionCapture]
Sink = Callable[[AttentionCapture], None]


Attach = Callable[[Sink], Sequence[Removable]]


def on_forward(module: nn.Module, capture: CaptureFn) -> Attach:
    """The usual hooks: one forward hook on the layer itself, turned into a capture."""

    def attach(sink: Sink) -> list[Removable]:
        def read(inputs: tuple[Tensor, ...], output: object) -> None:
            # Invisible to discovered layers around this one: they count the model's calls.
            with torch._C.DisableTorchFunction():
                found = capture(inputs, output)
            sink(found)

        return [on_output(module, read)]

    return attach


@dataclass(frozen=True)
class Capturer:
    """How attnviz reads one attention layer: its family, how it was found, its hooks.

    ``attach(sink)`` registers the hooks that hand each forward call's capture to ``sink``
    and returns their handles (the caller removes them). Usually one forward hook on the
    layer (:func:`on_forward`); an adapter may hook a child where the layer's own hook cannot
    see the map. ``covers`` names submodules this layer reads, so they are not listed again.
    """

    family: str
    found_by: FoundBy
    attach: Attach
    covers: tuple[str, ...] = ()
    # The map is one query point's attention, and --query (QUERY_POINTS) picks the point.
    reads_query: bool = False
    # For a discovered layer (its family is the pattern recognised): what its map is.
    map_is: str = ""
