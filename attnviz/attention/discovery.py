"""Discovery: spatial attention found by what a model computes, not by its class names.

One probe forward pass runs under a :class:`~torch.overrides.TorchFunctionMode` that sees every
torch call, while forward hooks on every module say which module is running. Two kinds of
attention are recognised from the shapes and the roles of the tensors:

- **Gates**: a sigmoid's output G of shape (N, 1, h, w) or (N, C, h, w), possibly moved
  (expanded, resampled, ``1 + G``), that multiplies features of the same h × w. A gate of
  shape (N, C, 1, 1) is channel attention (SE, ECA, CBAM's channel half): never listed, only
  reported. A pair of gates (N, C, h, 1) and (N, C, 1, w) on the same features is coordinate
  attention. A gate applied to a tensor whose last two axes are not the image's (triplet
  attention's C × W and H × C branches, found by following permutes) is not spatial.
- **Attention matrices**: a softmax over the last axis, or a ``scaled_dot_product_attention``
  call, whose weights are applied to values by a matrix product. The positions of its rows are
  learnt by replaying, on a tensor of row numbers, every reshape, permute, roll and slice the
  model applies to the product afterwards (how windowed attention is stitched back into one
  map). Rows that end up as channels rather than positions are channel attention (DANet's
  CAM). A softmax of shape (N, H, W, H + W) on (N, C, H, W) features is criss-cross attention.

The layer a pattern belongs to is the innermost module that computes it, skipping plain
activations (``nn.Sigmoid``, ``nn.Softmax``) and ``nn.Sequential`` containers; it must also
apply the map or return it. Where the evidence is ambiguous nothing is listed: a false
spatial layer is worse than a missing one. The model itself (the root module) is never a
layer. The probe keeps every tensor alive until it ends, so tensor ids stay unique.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import attnviz.attention.watch as watch
from attnviz.attention.hooks import around_calls, removing

# ---------------------------------------------------------------------------- what is found


@dataclass(frozen=True)
class TokenLayout:
    """Where the rows of an attention matrix lie in the image, learnt on the probe.

    Rows are the attention's leading axes and its query axis flattened, for one photo
    (``rows`` of them; photos are the outermost axis). ``token_of_row`` gives each row's
    token: 0 … prefix − 1 are tokens that are not positions (a class token), prefix … are the
    grid's cells in row-major order, −1 is padding. Keys are the same tokens as the queries
    of their block of rows, unless ``key_grid`` says they lie on a grid of their own (keys
    pooled, as in non-local blocks with sub-sampling).
    """

    grid: tuple[int, int]
    prefix: int
    rows: int
    queries: int
    keys: int
    token_of_row: Tensor
    key_grid: tuple[int, int] | None = None
    # Keys cut from a grid of their own (overlapping windows): per block of rows, each key's
    # cell of key_grid (−1: padding). None: keys pooled in row-major order.
    key_position: Tensor | None = None


@dataclass(frozen=True)
class GateRecipe:
    """A gate layer: which of its sigmoid calls are the map, which call applies it."""

    pattern: Literal["sigmoid gate", "coordinate gate"]
    gates: tuple[int, ...]  # ordinals of the sigmoid calls in one forward of the layer
    product: int | None  # ordinal of the mul that applies the last gate, inside the layer
    features_input: int | None  # else: the input the caller multiplies by the returned map
    channel_gate: int | None = None  # a channel gate in the same layer (CBAM's pair)


@dataclass(frozen=True)
class AttentionRecipe:
    """An attention-matrix layer: the call that makes the weights, the one that applies them."""

    pattern: Literal[
        "softmax attention", "scaled-dot-product attention", "criss-cross attention",
        "softmax pooling",
    ]  # fmt: skip
    call: int  # ordinal of the softmax (or sdpa) call in one forward of the layer
    applied: tuple[str, int, int] | None  # (kind, ordinal, row axis) of weights @ values
    layout: TokenLayout | None  # None for criss-cross attention (its layout is its shape)


Recipe = GateRecipe | AttentionRecipe


@dataclass(frozen=True)
class Discovery:
    """What one probe found: spatial layers by name (forward order) and channel attention."""

    layers: dict[str, Recipe]
    channel_only: tuple[tuple[str, str], ...] = ()  # (layer, what) of channel attention


_FOUND: weakref.WeakKeyDictionary[nn.Module, Discovery] = weakref.WeakKeyDictionary()


def discovered(model: nn.Module) -> Discovery | None:
    """The result of :func:`discover` on ``model``, if it ran."""
    return _FOUND.get(model)


def reads_query_point(recipe: Recipe) -> bool:
    """Whether the layer's map is one query point's row, picked by ``--query``."""
    return isinstance(recipe, AttentionRecipe) and recipe.pattern != "softmax pooling"


def describe(recipe: Recipe) -> str:
    """What the map of a discovered layer is, in a few words (``attnviz layers``)."""
    if isinstance(recipe, GateRecipe):
        if recipe.pattern == "coordinate gate":
            return "product of its H and W gates, mean over channels"
        return "its sigmoid gate over positions (mean over channels)"
    if recipe.pattern == "criss-cross attention":
        return "attention received along rows and columns / max; --query: that point's cross"
    if recipe.pattern == "softmax pooling":
        return "its softmax over positions (the weights of the pooled context) / max"
    if recipe.layout is not None and recipe.layout.prefix:
        return "class token's attention / max, mean over heads; --query: that patch's row"
    return "attention received / max, mean over heads; --query: that position's row"


# ---------------------------------------------------------------------------- the probe


@dataclass(eq=False)
class _Invocation:
    """One forward call of one module during the probe."""

    name: str
    module: nn.Module
    parent: _Invocation | None
    inputs: tuple[object, ...]
    output: object = None
    calls: int = 0  # torch calls made directly in its forward (not in children)
    children: int = 0

    def chain(self) -> Iterator[_Invocation]:
        inv: _Invocation | None = self
        while inv is not None:
            yield inv
            inv = inv.parent


@dataclass(eq=False)
class _Event:
    index: int
    kind: str
    func: object
    args: tuple[object, ...]
    kwargs: dict[str, object]
    result: object
    inv: _Invocation


@dataclass(eq=False)
class _Replay:
    """Row numbers of an attention matrix carried along a tensor the model derived from it."""

    source: int  # event index of the softmax / sdpa
    index: Tensor  # int64, same shape as the tensor: the row each value came from (−1: pad)
    applied: bool


@dataclass(eq=False)
class _Application:
    gates: frozenset[int]
    event: _Event
    features: Tensor
    gate_shape: tuple[int, ...]  # the gate as multiplied (expanded, resampled …)
    extent: tuple[int, ...]  # the gate before any expansion: what it varies over


IMAGE_AXES = ("N", "C", "H", "W")


class _Probe(TorchFunctionMode):
    def __init__(self, stack: list[_Invocation], example: Tensor) -> None:
        super().__init__()
        self.stack = stack
        self.photos = int(example.shape[0])  # rows and gates must vary with the photo axis
        self.image_hw = (int(example.shape[-2]), int(example.shape[-1]))
        self.events: list[_Event] = []
        # 4-D tensor id -> the image axis of each dim
        self.axes: dict[int, tuple[str, ...]] = {id(example): IMAGE_AXES}
        self.gate_of: dict[int, frozenset[int]] = {}  # tensor id -> sigmoid events it carries
        self.extent: dict[int, tuple[int, ...]] = {}  # its shape before any expansion
        self.applications: list[_Application] = []
        self.replays: dict[int, _Replay] = {}  # tensor id -> its rows
        self.finals: dict[int, _Replay] = {}  # source -> replay that lies on the image
        self.frozen: set[int] = set()  # sources whose final layout is settled
        self.positions: dict[int, int] = {}  # source -> H·W of its layer's (N, C, H, W) input
        # Tensor id -> the call that made it. Holding every call keeps every tensor alive
        # until the probe ends, so the ids used as keys above stay unique.
        self.producer: dict[int, tuple[object, tuple, dict, object]] = {}
        self.first_application: dict[int, tuple[_Event, int]] = {}
        self.rep_of: dict[int, Tensor] = {}  # source -> row -> representative row

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inv = self.stack[-1] if self.stack else None
        if inv is not None:
            inv.calls += 1
        for r in result if isinstance(result, list | tuple) else (result,):
            if isinstance(r, Tensor):
                self.producer[id(r)] = (func, args, kwargs, result)
        kind = watch.kind_of(func)
        event = None
        if kind is not None and inv is not None:
            event = _Event(len(self.events), kind, func, args, kwargs, result, inv)
            self.events.append(event)
        try:
            self._follow_axes(func, args, kwargs, result)
            self._follow_gates(func, args, kwargs, result, event)
            self._follow_rows(func, args, kwargs, result, event)
        except Exception:  # noqa: BLE001 - bookkeeping on an unusual call must never break
            pass  # the user's forward pass: what it could not follow is simply not found
        return result

    # -- which image axis each dimension of a 4-D tensor holds (for triplet attention)
    def _follow_axes(self, func: object, args: tuple, kwargs: dict, result: object) -> None:
        if not isinstance(result, Tensor) or result.dim() != 4:
            return
        source = next(
            (t for t in watch.tensors_in(args, kwargs) if t.dim() == 4 and id(t) in self.axes),
            None,
        )
        axes = self.axes.get(id(source)) if source is not None else None
        if axes is None:
            self.axes[id(result)] = IMAGE_AXES
            return
        dims = _permutation(func, args, kwargs)
        self.axes[id(result)] = tuple(axes[d] for d in dims) if dims is not None else axes

    # -- sigmoid gates and where they are applied
    def _follow_gates(
        self, func: object, args: tuple, kwargs: dict, result: object, event: _Event | None
    ) -> None:
        if event is not None and event.kind == "sigmoid" and isinstance(result, Tensor):
            self.gate_of[id(result)] = frozenset({event.index})
            self.extent[id(result)] = tuple(result.shape)
            return
        tensors = watch.tensors_in(args, kwargs)
        gates = frozenset().union(*(self.gate_of.get(id(t), frozenset()) for t in tensors))
        if not gates:
            return
        others = [t for t in tensors if id(t) not in self.gate_of]
        carried = [t for t in tensors if id(t) in self.gate_of]
        if func in watch.LAYOUT or func in watch.SAME_PLACE or func in watch.RESAMPLE:
            # Expanding a gate repeats it without adding anything: it keeps its extent.
            expands = func in watch.EXPAND
            extent = self.extent[id(carried[0])] if expands else None
            self._mark(result, gates, extent)
        elif func in watch.ARITHMETIC:
            if all(t.numel() <= 1 for t in others):
                self._mark(result, gates, _broadcast([self.extent[id(t)] for t in carried]))
            elif (
                event is not None
                and event.kind == "mul"
                and len(others) == 1
                and others[0].dim() == 4
                and isinstance(result, Tensor)
                and result.shape == others[0].shape
            ):
                gate = carried[0]
                self.applications.append(
                    _Application(gates, event, others[0], tuple(gate.shape), self.extent[id(gate)])
                )

    def _mark(self, result: object, gates: frozenset[int], extent: tuple[int, ...] | None) -> None:
        for r in result if isinstance(result, list | tuple) else (result,):
            if isinstance(r, Tensor):
                self.gate_of[id(r)] = self.gate_of.get(id(r), frozenset()) | gates
                self.extent[id(r)] = extent if extent is not None else tuple(r.shape)

    # -- attention matrices: the rows, followed to where they land
    def _follow_rows(
        self, func: object, args: tuple, kwargs: dict, result: object, event: _Event | None
    ) -> None:
        if event is not None and event.kind == "softmax" and isinstance(result, Tensor):
            dim = watch.softmax_dim(args, kwargs)
            if result.dim() >= 2 and dim is not None and dim % result.dim() == result.dim() - 1:
                self._start(event, result, applied=False)
            return
        if event is not None and event.kind == "sdpa" and isinstance(result, Tensor):
            self._start(event, result, applied=True)
            return
        tracked = [
            (i, t) for i, t in enumerate(watch.tensors_in(args, kwargs))
            if id(t) in self.replays and self.replays[id(t)].source not in self.frozen
        ]  # fmt: skip
        if not tracked:
            return
        sources = {self.replays[id(t)].source for _, t in tracked}
        if len(sources) != 1:
            return
        (source,) = sources
        final = self.finals.get(source)
        # Anything but moving the rows on the image settles the layout (a residual add).
        settles = final is not None and func not in watch.LAYOUT and func not in watch.SAME_PLACE
        if settles and any(self.replays[id(t)] is final for _, t in tracked):
            self.frozen.add(source)
            return
        # A call the rows cannot follow: the layout ends before it.
        with contextlib.suppress(RuntimeError, ValueError, TypeError, IndexError):
            self._replay(func, args, kwargs, result, event, source, [t for _, t in tracked])

    def _start(self, event: _Event, result: Tensor, applied: bool) -> None:
        rows = result.shape[:-1].numel()
        # Integers: exact, and on every device (MPS has no float64).
        index = torch.arange(rows, dtype=torch.long, device=result.device)
        index = index.view(*result.shape[:-1], 1).expand(result.shape)
        self.rep_of[event.index] = torch.arange(rows, device=result.device)
        owner = _owner(event.inv)
        x = owner.inputs[0] if owner is not None and owner.inputs else None
        if isinstance(x, Tensor) and x.dim() == 4:
            self.positions[event.index] = x.shape[2] * x.shape[3]
        if applied:
            self.first_application[event.index] = (event, -2)
        self._set(result, event.index, index, applied)

    def _set(self, tensor: Tensor, source: int, index: Tensor, applied: bool) -> _Replay:
        state = _Replay(source, index, applied)
        self.replays[id(tensor)] = state
        if applied and source not in self.frozen and self._on_image(source, index):
            self.finals[source] = state  # on the image; layout calls may still move it (a roll)
        return state

    def _on_image(self, source: int, index: Tensor) -> bool:
        """Whether rows laid out as ``index`` lie on the image: the photos first, each holding
        its own rows (the attention's photo axis is outermost), then a grid of the image's
        aspect (or tokens that make one), plus one axis of channels; or rows that landed on
        channels only (channel attention, also an answer)."""
        if index.shape[0] != self.photos or index.dim() not in (3, 4):
            return False
        if not _photo_outermost(index, self.rep_of[source].numel()):
            return False
        rows = _squeezed(index[0])
        steady = [_steadiness(rows, a) >= 0.5 for a in range(rows.dim())]
        if rows.dim() == 3 and sum(steady) == 2:
            return True
        if sum(steady) != 1 or rows.dim() not in (2, 3):
            return False
        sizes = [n for n, s in zip(rows.shape, steady, strict=True) if not s]
        if len(sizes) == 2:
            return sizes[0] * self.image_hw[1] == sizes[1] * self.image_hw[0]
        # Rows along one axis while the layer's positions lie along the other: its rows are
        # channels (DANet's CAM before its reshape), not tokens.
        steady_size = rows.shape[steady.index(True)]
        if self.positions.get(source) == steady_size:
            return False
        return _token_grid(sizes[0], self.image_hw) is not None

    def _replay(
        self,
        func: object,
        args: tuple,
        kwargs: dict,
        result: object,
        event: _Event | None,
        source: int,
        tracked: list[Tensor],
    ) -> None:
        first = self.replays[id(tracked[0])]
        applied = first.applied
        if func in watch.LAYOUT:
            swap = {id(t): self.replays[id(t)].index for t in tracked}
            if func is F.pad:  # padding holds no row
                kwargs = {**kwargs, "value": -1}
                args = args[:3]
            call = cast(Callable[..., object], func)  # a torch function the mode saw
            out = call(*_substitute(args, swap), **_substitute_kw(kwargs, swap))
            for r, i in _pairs(result, out):
                self._set(r, source, i, applied)
        elif func in watch.SAME_PLACE and isinstance(result, Tensor):
            if result.shape == tracked[0].shape:
                self._set(result, source, first.index, applied)
        elif func in watch.ARITHMETIC and isinstance(result, Tensor):
            others = [t for t in watch.tensors_in(args, kwargs) if id(t) not in self.replays]
            same = all(torch.equal(self.replays[id(t)].index, first.index) for t in tracked)
            # a scale, a bias, or a residual in the same layout: every value keeps its place
            fits = all(t.numel() * 4 <= result.numel() or t.shape == result.shape for t in others)
            if same and fits and result.shape == tracked[0].shape:
                self._set(result, source, first.index, applied)
        elif func in watch.CHANNEL_MIX and isinstance(result, Tensor) and args[0] is tracked[0]:
            rep = self._collapse(source, first.index, -1)
            self._set(result, source, rep.expand(result.shape), applied)
        elif event is not None and event.kind == "matmul" and isinstance(result, Tensor):
            self._apply_matmul(func, args, result, event, source, tracked)
        elif event is not None and event.kind == "einsum" and isinstance(result, Tensor):
            self._apply_einsum(args, result, event, source, tracked)

    def _apply_matmul(
        self, func: object, args: tuple, result: Tensor, event: _Event, source: int,
        tracked: list[Tensor],
    ) -> None:  # fmt: skip
        left, right = (args[1], args[0]) if func is torch.Tensor.__rmatmul__ else args[:2]
        if len(tracked) != 1 or left.dim() < 2 or right.dim() < 2:
            return
        index = self.replays[id(tracked[0])].index
        if tracked[0] is left and bool((index == index[..., :1]).all()):
            out, axis = index[..., :, :1], -2
        elif tracked[0] is right and bool((index == index[..., :1, :]).all()):
            out, axis = index[..., :1, :], -1
        else:
            return
        self._set(result, source, torch.broadcast_to(out, result.shape), True)
        self.first_application.setdefault(source, (event, axis))

    def _apply_einsum(
        self, args: tuple, result: Tensor, event: _Event, source: int, tracked: list[Tensor]
    ) -> None:
        equation = args[0] if isinstance(args[0], str) else None
        operands = list(args[1:]) if len(args) > 2 else list(args[1])
        if equation is None or "..." in equation or "->" not in equation or len(operands) != 2:
            return
        inputs, output = equation.replace(" ", "").split("->")
        subscripts = inputs.split(",")
        position = next(i for i, op in enumerate(operands) if op is tracked[0])
        letters = subscripts[position]
        index = self.replays[id(tracked[0])].index
        for axis, letter in reversed(list(enumerate(letters))):
            if letter not in output:  # contracted: rows must not vary along it
                if not bool((index == index.narrow(axis, 0, 1)).all()):
                    return
                index = index.narrow(axis, 0, 1).squeeze(axis)
                letters = letters[:axis] + letters[axis + 1 :]
        order = [letters.index(c) for c in output if c in letters]
        index = index.permute(order)
        shape = [result.shape[i] if c in letters else 1 for i, c in enumerate(output)]
        out = index.reshape(shape)
        self._set(result, source, torch.broadcast_to(out, result.shape), True)
        rows_letter = subscripts[position][-2]
        self.first_application.setdefault(source, (event, output.index(rows_letter)))

    def _collapse(self, source: int, index: Tensor, axis: int) -> Tensor:
        """Values along ``axis`` that belong to one position (heads merged into channels):
        one representative row each, the others remembered as its members."""
        rep = index.amax(axis, keepdim=True).where(index.amin(axis, keepdim=True) < 0,
                                                   index.amin(axis, keepdim=True))  # fmt: skip
        members = index.flatten()
        reps = rep.expand_as(index).flatten()
        keep = members >= 0
        self.rep_of[source][members[keep]] = reps[keep]
        return rep


# The calls that swap two axes, with the keywords that name them.
_SWAP_KEYWORDS: dict[object, tuple[str, str]] = {
    **dict.fromkeys(
        (torch.Tensor.transpose, torch.transpose, torch.Tensor.swapdims, torch.swapdims),
        ("dim0", "dim1"),
    ),
    **dict.fromkeys((torch.Tensor.swapaxes, torch.swapaxes), ("axis0", "axis1")),
}


def _permutation(func: object, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """The dims of a 4-D permute / transpose / movedim as a permutation (the result's axis i
    is the input's axis dims[i]), else None; positional or keyword: ``x.permute(0, 2, 3,
    1)``, ``torch.permute(x, dims=...)``, ``x.transpose(dim0=2, dim1=3)``, ``x.movedim(1,
    3)``."""
    if func in (torch.Tensor.permute, torch.permute):
        if "dims" in kwargs:
            dims = kwargs["dims"]
        else:
            dims = args[1:] if func is torch.Tensor.permute else args[1]
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], list | tuple) else dims
        return tuple(int(d) % 4 for d in dims) if len(dims) == 4 else None
    if func in _SWAP_KEYWORDS:
        given = [*args[1:3], *(kwargs[k] for k in _SWAP_KEYWORDS[func] if k in kwargs)]
        if len(given) != 2:
            return None
        a, b = int(given[0]) % 4, int(given[1]) % 4
        order = [0, 1, 2, 3]
        order[a], order[b] = b, a
        return tuple(order)
    if func in (torch.Tensor.movedim, torch.movedim, torch.Tensor.moveaxis, torch.moveaxis):
        given = [*args[1:3], *(kwargs[k] for k in ("source", "destination") if k in kwargs)]
        if len(given) != 2:
            return None
        source, destination = ([int(d) % 4 for d in (g if isinstance(g, list | tuple) else [g])]
                               for g in given)  # fmt: skip
        moved = dict(zip(destination, source, strict=True))  # result axis -> input axis
        rest = iter(d for d in range(4) if d not in source)
        return tuple(moved[i] if i in moved else next(rest) for i in range(4))
    return None


def _substitute(args: tuple, swap: dict[int, Tensor]) -> tuple:
    out: list[object] = []
    for a in args:
        if isinstance(a, Tensor) and id(a) in swap:
            out.append(swap[id(a)])
        elif isinstance(a, list | tuple) and any(isinstance(v, Tensor) for v in a):
            out.append(type(a)(swap.get(id(v), v) if isinstance(v, Tensor) else v for v in a))
        else:
            out.append(a)
    return tuple(out)


def _substitute_kw(kwargs: dict, swap: dict[int, Tensor]) -> dict:
    return {k: swap.get(id(v), v) if isinstance(v, Tensor) else v for k, v in kwargs.items()}


def _pairs(result: object, out: object) -> list[tuple[Tensor, Tensor]]:
    if isinstance(result, Tensor) and isinstance(out, Tensor) and result.shape == out.shape:
        return [(result, out)]
    if isinstance(result, list | tuple) and isinstance(out, list | tuple):
        return [
            (r, o) for r, o in zip(result, out, strict=False)
            if isinstance(r, Tensor) and isinstance(o, Tensor) and r.shape == o.shape
        ]  # fmt: skip
    return []


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[_Invocation]]:
    """Forward hooks on every module that keep the stack of running module calls."""
    stack: list[_Invocation] = []

    def enter(name: str, module: nn.Module) -> Callable[[tuple[object, ...]], None]:
        def start(inputs: tuple[object, ...]) -> None:
            parent = stack[-1] if stack else None
            if parent is not None:
                parent.children += 1
            stack.append(_Invocation(name, module, parent, inputs))

        return start

    def leave(_inputs: tuple[object, ...], output: object) -> None:
        if stack:
            stack.pop().output = output

    with removing() as handles:
        for name, module in model.named_modules():
            handles += around_calls(module, enter(name, module), leave)
        yield stack


# ---------------------------------------------------------------------------- analysis


def _is_plain(inv: _Invocation) -> bool:
    """An activation module (one call, no children) or a container: never the layer."""
    return isinstance(inv.module, nn.Sequential) or (inv.children == 0 and inv.calls <= 1)


def _owner(inv: _Invocation) -> _Invocation | None:
    for candidate in inv.chain():
        if candidate.name == "":
            return None
        if not _is_plain(candidate):
            return candidate
    return None


def _inside(event: _Event, owner: _Invocation) -> bool:
    return any(inv is owner for inv in event.inv.chain())


def _ordinal(events: list[_Event], event: _Event, owner: _Invocation) -> int:
    return sum(1 for e in events[: event.index] if e.kind == event.kind and _inside(e, owner))


@dataclass
class _Found:
    owner: _Invocation
    recipe: Recipe


@dataclass
class _Analysis:
    found: list[_Found] = field(default_factory=list)
    channel: list[tuple[_Invocation, str]] = field(default_factory=list)


def _gate_layers(probe: _Probe, analysis: _Analysis) -> None:
    by_owner: dict[int, list[tuple[str, _Event, _Application]]] = {}
    owners: dict[int, _Invocation] = {}
    for app in probe.applications:
        for g in sorted(app.gates):
            gate = probe.events[g]
            x = app.features
            owner = _owner(gate.inv)
            # One gate: what it varies over before it was expanded. Several multiplied
            # together first (coordinate attention as x * (a_h * a_w)): each its own.
            result = cast(Tensor, gate.result)  # a sigmoid's output
            own = tuple(result.shape)
            extent = app.extent if len(app.gates) == 1 or len(own) != 4 else own
            if owner is None or len(extent) not in (2, 4) or x.shape[0] != probe.photos:
                continue
            if extent[0] != probe.photos or _gates_itself(probe, gate, x):
                continue  # a gate that is a parameter (no photo axis), or Swish / GLU
            h, w = (extent[2], extent[3]) if len(extent) == 4 else (1, 1)
            if (h, w) == (1, 1):
                what = "channel"
            elif result.dim() != 4:
                continue  # a map over positions is read from a (N, C, h, w) sigmoid
            elif probe.axes.get(id(x), IMAGE_AXES)[2:] != ("H", "W"):
                continue  # a gate over a plane that is not the image's (triplet's C×W, H×C)
            elif not _broadcasts(app.gate_shape, tuple(x.shape)):
                continue
            elif h > 1 and w > 1:
                what = "spatial"
            else:
                what = "rows" if w == 1 else "columns"
            by_owner.setdefault(id(owner), []).append((what, gate, app))
            owners[id(owner)] = owner
    seen_modules: set[int] = set()
    for key, entries in by_owner.items():
        owner = owners[key]
        if id(owner.module) in seen_modules:
            continue  # a module called twice: its first call decides
        seen_modules.add(id(owner.module))
        recipe = _gate_recipe(probe, owner, entries)
        if recipe is not None:
            analysis.found.append(_Found(owner, recipe))
        elif all(what == "channel" for what, _, _ in entries):
            analysis.channel.append((owner, "channel gate"))


def _gates_itself(probe: _Probe, gate: _Event, features: Tensor) -> bool:
    """Whether the sigmoid's input is the features it multiplies, or another slice of the
    same tensor: Swish x · σ(βx) and GLU a · σ(b) are activations, not attention."""
    logits = gate.args[0] if gate.args else None
    for _ in range(4):  # through scalar scaling (Swish's β) and casts
        if logits is features:
            return True
        if not isinstance(logits, Tensor) or id(logits) not in probe.producer:
            return False
        func, args, kwargs, result = probe.producer[id(logits)]
        if func in (torch.Tensor.chunk, torch.chunk, torch.Tensor.split, torch.split,
                    torch.Tensor.unbind, torch.unbind):  # fmt: skip
            return isinstance(result, list | tuple) and any(r is features for r in result)
        inputs = [t for t in watch.tensors_in(args, kwargs) if t.numel() > 1]
        if func not in watch.ARITHMETIC and func not in watch.SAME_PLACE or len(inputs) != 1:
            return False
        logits = inputs[0]
    return False


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(*shapes))


def _broadcasts(gate: tuple[int, ...], features: tuple[int, ...]) -> bool:
    return len(gate) == len(features) and all(
        g in (1, f) for g, f in zip(gate, features, strict=True)
    )


def _gate_recipe(
    probe: _Probe, owner: _Invocation, entries: list[tuple[str, _Event, _Application]]
) -> GateRecipe | None:
    kinds = {what for what, _, _ in entries}
    spatial = [(g, a) for what, g, a in entries if what == "spatial"]
    rows = [(g, a) for what, g, a in entries if what == "rows"]
    columns = [(g, a) for what, g, a in entries if what == "columns"]
    channel = [g for what, g, _ in entries if what == "channel"]
    if spatial:
        chosen = [spatial[-1]]
        pattern: Literal["sigmoid gate", "coordinate gate"] = "sigmoid gate"
    elif rows and columns and kinds <= {"rows", "columns", "channel"}:
        chosen = [rows[0], columns[0]]
        pattern = "coordinate gate"
    else:
        return None
    last_app = max((a for _, a in chosen), key=lambda a: a.event.index)
    product = features_input = None
    if _inside(last_app.event, owner):
        product = _ordinal(probe.events, last_app.event, owner)
    elif id(owner.output) in probe.gate_of:  # the layer returns its map; the caller multiplies
        features_input = next(
            (i for i, x in enumerate(owner.inputs) if x is last_app.features), None
        )
    else:
        return None
    gates = tuple(_ordinal(probe.events, g, owner) for g, _ in chosen)
    channel_gate = _ordinal(probe.events, channel[0], owner) if channel and spatial else None
    return GateRecipe(pattern, gates, product, features_input, channel_gate)


def _attention_layers(probe: _Probe, analysis: _Analysis) -> None:
    seen_modules: set[int] = set()
    for source, (applied_event, row_axis) in probe.first_application.items():
        event = probe.events[source]
        owner = _owner(event.inv)
        if owner is None or not _inside(applied_event, owner) or id(owner.module) in seen_modules:
            continue
        weights = event.result if event.kind == "softmax" else watch.sdpa_weights(
            event.args, event.kwargs
        )  # fmt: skip
        assert isinstance(weights, Tensor)
        call = _ordinal(probe.events, event, owner)
        applied = (applied_event.kind, _ordinal(probe.events, applied_event, owner), row_axis)
        features = next((x for x in owner.inputs if isinstance(x, Tensor)), None)
        if _is_criss_cross(weights, features):
            seen_modules.add(id(owner.module))
            analysis.found.append(
                _Found(owner, AttentionRecipe("criss-cross attention", call, applied, None))
            )
            continue
        layout = _layout(probe, source, weights)
        pooling = _pooling_layout(probe, source, weights) if layout is None else None
        if pooling is not None:
            seen_modules.add(id(owner.module))
            recipe = AttentionRecipe("softmax pooling", call, applied, pooling)
            analysis.found.append(_Found(owner, recipe))
        elif layout == "channel":
            analysis.channel.append((owner, "channel attention"))
            seen_modules.add(id(owner.module))
        elif layout is not None:
            seen_modules.add(id(owner.module))
            pattern: Literal["softmax attention", "scaled-dot-product attention"] = (
                "softmax attention" if event.kind == "softmax" else "scaled-dot-product attention"
            )
            analysis.found.append(_Found(owner, AttentionRecipe(pattern, call, applied, layout)))


def _is_criss_cross(weights: Tensor, features: Tensor | None) -> bool:
    if features is None or features.dim() != 4 or weights.dim() != 4:
        return False
    n, _, h, w = features.shape
    return tuple(weights.shape) == (n, h, w, h + w)


def _layout(probe: _Probe, source: int, weights: Tensor) -> TokenLayout | Literal["channel"] | None:
    final = probe.finals.get(source)
    if final is None or weights.dim() < 2:
        return None
    index = _squeezed(final.index[0])  # the first photo's rows, axes of one dropped
    queries, keys = weights.shape[-2], weights.shape[-1]
    rows = weights.shape[:-1].numel() // probe.photos  # per photo
    if index.dim() == 1:
        channel_axis = None
    elif index.dim() in (2, 3):
        steady = [_steadiness(index, a) >= 0.5 for a in range(index.dim())]
        if index.dim() == 3 and sum(steady) == 2:
            return "channel"  # rows land on one axis only: channels, not positions (DANet's CAM)
        if sum(steady) != 1:
            return None
        channel_axis = steady.index(True)
    else:
        return None
    if channel_axis is not None:
        rep = probe._collapse(source, index, channel_axis).squeeze(channel_axis)
    else:
        rep = index
    rep_of = probe.rep_of[source]
    while not torch.equal(rep_of[rep_of], rep_of):  # representatives of representatives
        rep_of = rep_of[rep_of]
    if rep.dim() == 2:
        grid, prefix, cells = (rep.shape[0], rep.shape[1]), 0, rep.flatten()
    else:
        solved = _token_grid(rep.shape[0], probe.image_hw)
        if solved is None:
            return None
        prefix, grid = solved
        cells = rep
    position = torch.full((rows,), -1, dtype=torch.long)
    valid = (cells >= 0).cpu()
    position[cells.long().cpu()[valid]] = torch.arange(cells.numel())[valid]
    token_of_row = position[rep_of[:rows].cpu()]
    key_grid, key_position = None, None
    if keys != queries:
        found = _key_positions(probe, source, rows // queries) if prefix == 0 else None
        if found is not None:
            key_grid, key_position = found
        else:
            key_grid = _pooled_grid(grid, keys) if prefix == 0 else None
        if key_grid is None:
            return None
    return TokenLayout(grid, prefix, rows, queries, keys, token_of_row, key_grid, key_position)


def _key_positions(
    probe: _Probe, source: int, blocks: int
) -> tuple[tuple[int, int], Tensor] | None:
    """Where each key of an attention lies on the image, for keys that are not the query
    tokens (HaloNet's overlapping windows): the key tensor is traced back through layout
    calls (unfold, pad, reshape, split …) to the feature map it was cut from, and those calls
    are replayed on that map's position numbers. Returns the map's grid and, per block of
    rows, each key's cell (−1: padding)."""
    event = probe.events[source]
    if event.kind == "sdpa":
        key, axis = event.args[1] if len(event.args) > 1 else event.kwargs.get("key"), -2
    else:
        scores = _matmul_behind(probe, event.args[0] if event.args else None)
        if scores is None:
            return None
        func, args = scores
        key, axis = (args[0] if func is torch.Tensor.__rmatmul__ else args[1]), -1
    found = _positions_of(probe, key)
    if found is None:
        return None
    grid, positions = found
    along = -2 if axis == -1 else -1  # the key's feature axis: positions must not vary on it
    if not bool((positions == positions.narrow(along, 0, 1)).all()):
        return None
    per_key = positions.select(along, 0)  # (…, keys)
    per_key = per_key.reshape(probe.photos, -1, per_key.shape[-1])[0]  # the first photo's
    if per_key.shape[0] != blocks:
        return None
    return grid, (per_key - 1).long().cpu()


def _positions_of(probe: _Probe, tensor: object) -> tuple[tuple[int, int], Tensor] | None:
    """The cell (counted from 1; 0: padding) each value of ``tensor`` came from, for a tensor
    the model cut or reshaped from a feature map (N, C, h, w) by layout calls only."""
    if not isinstance(tensor, Tensor):
        return None
    chain: list[tuple[object, tuple, dict, object]] = []
    base = tensor
    while id(base) in probe.producer and probe.producer[id(base)][0] in watch.LAYOUT:
        call = probe.producer[id(base)]
        chain.append(call)
        inputs = watch.tensors_in(call[1], call[2])
        if len(inputs) != 1:
            return None
        base = inputs[0]
    if not chain or base.dim() != 4 or base.shape[0] != probe.photos:
        return None
    h, w = base.shape[2], base.shape[3]
    if h * probe.image_hw[1] != w * probe.image_hw[0]:
        return None  # not a map of the image (a row of tokens, a class token's strip)
    # Counted from 1, so that zero padding (F.pad) reads as "no position".
    index = (torch.arange(h * w, dtype=torch.long, device=base.device) + 1).view(1, 1, h, w)
    current: dict[int, Tensor] = {id(base): index.expand(base.shape)}
    try:
        for func, args, kwargs, result in reversed(chain):
            out = func(*_substitute(args, current), **_substitute_kw(kwargs, current))
            for r, i in _pairs(result, out):
                current[id(r)] = i
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None
    positions = current.get(id(tensor))
    return None if positions is None else ((h, w), positions)


def _pooling_layout(probe: _Probe, source: int, weights: Tensor) -> TokenLayout | None:
    """A softmax over positions that pools features into a context (GCNet's context block):
    its input is a map over the image's cells, reshaped; its rows (heads) are few."""
    event = probe.events[source]
    if event.kind != "softmax" or not event.args:
        return None
    found = _positions_of(probe, event.args[0])
    if found is None:
        return None
    (h, w), positions = found
    keys = weights.shape[-1]
    rows = weights.shape[:-1].numel() // probe.photos
    cells = positions.reshape(probe.photos, rows, keys)[0]
    if keys != h * w or h * w < 4 or rows > 64:
        return None
    if not all(bool((row.sort().values == torch.arange(1, keys + 1)).all()) for row in cells.cpu()):
        return None  # every row must weigh every cell once
    no_rows = torch.full((rows,), -1, dtype=torch.long)
    return TokenLayout((h, w), 0, rows, 1, keys, no_rows, (h, w), (cells - 1).long().cpu())


def _matmul_behind(probe: _Probe, scores: object) -> tuple[object, tuple] | None:
    """The q @ kᵀ call a softmax's input came from, through scaling and added biases."""
    for _ in range(6):
        if not isinstance(scores, Tensor) or id(scores) not in probe.producer:
            return None
        func, args, kwargs, _ = probe.producer[id(scores)]
        if watch.kind_of(func) == "matmul":
            return func, args
        if func not in watch.ARITHMETIC and func not in watch.SAME_PLACE:
            return None
        operands = watch.tensors_in(args, kwargs)
        behind = [t for t in operands if t.shape == scores.shape]
        scores = next(
            (t for t in behind if watch.kind_of(probe.producer.get(id(t), (None,))[0]) == "matmul"),
            behind[0] if behind else None,
        )
    return None


def _photo_outermost(index: Tensor, rows: int) -> bool:
    """Whether each photo's values hold only that photo's rows, in the same order: the rows
    of photo p are p · rows/photos + those of photo 0 (padding −1 aside)."""
    photos = index.shape[0]
    if rows % photos:
        return False
    first = index[0]
    for p in range(1, photos):
        shifted = torch.where(first >= 0, first + p * (rows // photos), first)
        if not torch.equal(index[p], shifted):
            return False
    return bool((first < rows // photos).all())


def _squeezed(index: Tensor) -> Tensor:
    return index.reshape([n for n in index.shape if n != 1])


def _steadiness(index: Tensor, axis: int) -> float:
    """The share of neighbours along ``axis`` that came from the same row."""
    if index.shape[axis] < 2:
        return 1.0
    a = index.narrow(axis, 0, index.shape[axis] - 1)
    b = index.narrow(axis, 1, index.shape[axis] - 1)
    return float((a == b).double().mean())


def _token_grid(tokens: int, image_hw: tuple[int, int]) -> tuple[int, tuple[int, int]] | None:
    """(prefix, (h, w)): a few leading tokens that are not positions, the rest a grid with
    the image's aspect."""
    ih, iw = image_hw
    for prefix in range(9):
        cells = tokens - prefix
        for h in range(2, cells + 1):
            if cells % h:
                continue
            w = cells // h
            if h * iw == w * ih:
                return prefix, (h, w)
    return None


def _pooled_grid(grid: tuple[int, int], keys: int) -> tuple[int, int] | None:
    h, w = grid
    for s in (2, 4, 8):
        for hk, wk in ((h // s, w // s), (-(-h // s), -(-w // s))):
            if hk * wk == keys:
                return hk, wk
    return None


# ---------------------------------------------------------------------------- entry point


def discover(model: nn.Module, example: Tensor, covered: set[str] | None = None) -> Discovery:
    """Run ``example`` through ``model`` once and remember the attention found there.

    ``example`` should hold two or more different photos: a gate or an attention matrix is
    only taken when it varies with the photo axis and keeps each photo's rows apart, which
    one photo cannot show.

    ``covered``: layers already read by the protocol or an adapter; neither they nor their
    submodules are listed again. Hooks and the mode are gone when this returns, also on error.
    """
    covered = covered or set()
    with _module_stack(model) as stack, torch.inference_mode():
        probe = _Probe(stack, example)
        with probe:
            model(example)
        analysis = _Analysis()
        _gate_layers(probe, analysis)
        _attention_layers(probe, analysis)

    def free(name: str) -> bool:
        return not any(name == c or name.startswith(c + ".") for c in covered)

    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    found = sorted(
        ((f.owner.name, f.recipe) for f in analysis.found if free(f.owner.name)),
        key=lambda item: order[item[0]],
    )
    layers: dict[str, Recipe] = {}
    for name, recipe in found:
        layers.setdefault(name, recipe)
    channel = tuple(
        sorted({(inv.name, what) for inv, what in analysis.channel if inv.name not in layers},
               key=lambda item: order[item[0]])
    )  # fmt: skip
    result = Discovery(layers, channel)
    _FOUND[model] = result
    return result
