"""Reading a discovered layer's maps from the tensors its forward pass computes.

While a discovered layer runs (between its forward pre-hook and its forward hook) a
:class:`~torch.overrides.TorchFunctionMode` counts its sigmoid, softmax, attention and product
calls and keeps the ones its recipe names (discovery.py). Nothing runs twice: the map is the
tensor the model made, reduced to (N, 1, h, w). The one exception is fused attention
(``scaled_dot_product_attention``), whose weights never exist as a tensor: they are computed
from the call's own query and key, exactly as the kernel does. Outside discovered layers no
mode is active, so other layers pay nothing.
"""

from __future__ import annotations

import threading
from typing import cast

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import attnviz.attention.watch as watch
from attnviz.attention.discovery import GateRecipe, Recipe, TokenLayout
from attnviz.attention.hooks import Removable, around_calls
from attnviz.attention.protocol import (
    QUERY_POINTS,
    AttentionCapture,
    Sink,
    cell_marker,
    query_cells,
)


class _Tap(TorchFunctionMode):
    """Keeps the outputs (or, for sdpa, the weights) of the calls ``wanted`` names."""

    def __init__(self, wanted: set[tuple[str, int]]) -> None:
        super().__init__()
        self.wanted = wanted
        self.counts: dict[str, int] = {}
        self.kept: dict[tuple[str, int], Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        kind = watch.kind_of(func)
        if kind is not None:
            n = self.counts.get(kind, 0)
            self.counts[kind] = n + 1
            if (kind, n) in self.wanted:
                # attnviz's own arithmetic is invisible to every watcher: a layer around this
                # one must count only the model's calls.
                with torch._C.DisableTorchFunction():
                    if kind == "sdpa":
                        self.kept[("sdpa-weights", n)] = watch.sdpa_weights(args, kwargs)
                    self.kept[(kind, n)] = result.detach().clone()
        return result


class _Watchers(threading.local):
    """The taps pushed by one layer's hooks, per thread (torch's mode stack is per thread)."""

    def __init__(self) -> None:
        self.stack: list[_Tap] = []


class _PopLeftovers:
    """A hook handle whose removal pops taps an interrupted forward left pushed (a Ctrl-C
    skips forward hooks, even ``always_call`` ones)."""

    def __init__(self, watchers: _Watchers) -> None:
        self.watchers = watchers

    def remove(self) -> None:
        while self.watchers.stack:
            self.watchers.stack.pop().__exit__(None, None, None)


def attach_discovered(module: nn.Module, recipe: Recipe, sink: Sink) -> list[Removable]:
    """Hooks on ``module`` that hand each forward call's capture to ``sink``. A call whose
    shapes differ from the probe's (the module used at another size too) gives no capture."""
    wanted = _wanted(recipe)
    watchers = _Watchers()

    def enter(_inputs: tuple[object, ...]) -> None:
        tap = _Tap(wanted)
        watchers.stack.append(tap)
        tap.__enter__()

    def leave(inputs: tuple[object, ...], output: object) -> None:
        if not watchers.stack:
            return
        tap = watchers.stack.pop()
        tap.__exit__(None, None, None)
        if not wanted <= tap.kept.keys():  # an error inside the layer leaves the set partial
            return
        with torch._C.DisableTorchFunction():
            try:
                capture = build(recipe, tap.kept, inputs, output)
            except (RuntimeError, ValueError, IndexError):
                return  # not the shapes the recipe was learnt on
        sink(capture)

    return [*around_calls(module, enter, leave), _PopLeftovers(watchers)]


def _wanted(recipe: Recipe) -> set[tuple[str, int]]:
    if isinstance(recipe, GateRecipe):
        wanted = {("sigmoid", g) for g in recipe.gates}
        if recipe.product is not None:
            wanted.add(("mul", recipe.product))
        if recipe.channel_gate is not None:
            wanted.add(("sigmoid", recipe.channel_gate))
        return wanted
    kind = "sdpa" if recipe.pattern == "scaled-dot-product attention" else "softmax"
    wanted = {(kind, recipe.call)}
    if recipe.applied is not None and recipe.applied[0] != "sdpa":
        wanted.add((recipe.applied[0], recipe.applied[1]))
    return wanted


def build(
    recipe: Recipe, kept: dict[tuple[str, int], Tensor], inputs: tuple[object, ...], output: object
) -> AttentionCapture:
    """The capture of one call of a discovered layer, built from the tensors its tap kept as
    ``recipe`` says; a call of other shapes than the probe's may raise (RuntimeError, ValueError,
    IndexError)."""
    if isinstance(recipe, GateRecipe):
        return _gate_capture(recipe, kept, inputs)
    if recipe.pattern == "criss-cross attention":
        return _criss_cross_capture(kept[("softmax", recipe.call)], inputs, output)
    if recipe.pattern == "softmax pooling":
        assert recipe.layout is not None
        return _pooling_capture(recipe.layout, kept[("softmax", recipe.call)], inputs)
    assert recipe.layout is not None
    values: Tensor | None
    if recipe.pattern == "scaled-dot-product attention":
        weights, values = kept[("sdpa-weights", recipe.call)], kept[("sdpa", recipe.call)]
        row_axis = -2
    else:
        weights = kept[("softmax", recipe.call)]
        values = kept[recipe.applied[:2]] if recipe.applied else None
        row_axis = recipe.applied[2] if recipe.applied else -2
    return token_capture(recipe.layout, weights.float(), values, row_axis)


# ---------------------------------------------------------------------------- gates


def _gate_capture(
    recipe: GateRecipe, kept: dict[tuple[str, int], Tensor], inputs: tuple[object, ...]
) -> AttentionCapture:
    gates = [kept[("sigmoid", g)].float() for g in recipe.gates]
    full = gates[0] if len(gates) == 1 else gates[0] * gates[1]  # coordinate: H gate × W gate
    weights = full.mean(dim=1, keepdim=True)
    channels = None
    if recipe.channel_gate is not None:
        channels = kept[("sigmoid", recipe.channel_gate)].float().flatten(1)
    if recipe.product is not None:
        weighted = kept[("mul", recipe.product)].float().abs().mean(dim=1, keepdim=True)
    elif recipe.features_input is not None and _same_grid(inputs[recipe.features_input], full):
        features = cast(Tensor, inputs[recipe.features_input])
        weighted = (full * features.float()).abs().mean(dim=1, keepdim=True)
    else:
        weighted = weights
    return AttentionCapture(weights, weighted, channels=channels)


def _same_grid(x: object, gate: Tensor) -> bool:
    return isinstance(x, Tensor) and x.dim() == 4 and x.shape[2:] == gate.shape[2:]


# ---------------------------------------------------------------------------- attention


def _by_max(maps: Tensor) -> Tensor:
    """(N, 1, h, w) divided by each photo's maximum: the strongest position is 1."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)
    return maps / peak.view(-1, 1, 1, 1)


def _query_cells(grid: tuple[int, int], n: int, device: torch.device) -> Tensor | None:
    """The --query point of each photo as a flat cell of ``grid``, or None without one."""
    if QUERY_POINTS.get() is None:
        return None
    return query_cells(torch.zeros(n, dtype=torch.long, device=device), *grid)


def token_capture(
    layout: TokenLayout, weights: Tensor, values: Tensor | None, row_axis: int
) -> AttentionCapture:
    """An attention matrix's maps on the image grid, stitched through ``layout``.

    weights: (…, queries, keys) probabilities; values: the product weights @ values (its rows
    on ``row_axis``), whose mean |·| per position is the weighted map. The map is the class
    token's row when there is a class token, else the attention each position receives
    (mean over the queries that see it and over heads); with ``--query``, that cell's row.
    Each is divided by its maximum. The mean received is also a part.
    """
    rows, keys, queries = layout.rows, layout.keys, layout.queries
    n = weights.numel() // (rows * keys)
    a = weights.reshape(n, rows, keys)
    token = layout.token_of_row.to(a.device)
    valid = token >= 0
    tokens = layout.prefix + layout.grid[0] * layout.grid[1]
    rows_per_token = torch.bincount(token[valid], minlength=tokens).clamp_min(1).float()

    def token_sum(per_row: Tensor) -> Tensor:
        """(n, rows) values per row -> (n, tokens), summed over the rows of each token."""
        out = per_row.new_zeros(n, tokens)
        return out.index_add_(1, token[valid], per_row[:, valid])

    def on_grid(per_token: Tensor) -> Tensor:
        return per_token[:, layout.prefix :].reshape(n, 1, *layout.grid)

    blocks = rows // queries
    if layout.key_position is not None:  # keys placed on their own grid (overlapping windows)
        received = _received_on_key_grid(layout, a)
    elif layout.key_grid is not None:
        received = _by_max(a.mean(dim=1).reshape(n, 1, *layout.key_grid))
    else:  # key k of a block of rows is the token of that block's row k
        per_key = a.reshape(n, blocks, queries, keys).mean(dim=2).reshape(n, rows)
        received = _by_max(on_grid(token_sum(per_key) / rows_per_token))
    weighted = received
    if values is not None:
        per_row = values.float().movedim(row_axis, -1).abs().mean(dim=-2).reshape(n, rows)
        weighted = on_grid(token_sum(per_row) / rows_per_token)
    parts = {"mean received": (received, received)}
    cells = _query_cells(layout.grid, n, a.device)
    marker = None
    if cells is not None:
        query = cells + layout.prefix
        marker = cell_marker(cells, *layout.grid)
    elif layout.prefix:
        query = torch.zeros(n, dtype=torch.long, device=a.device)  # the class token
    else:
        return AttentionCapture(received, weighted, parts=parts)
    mine = (token.unsqueeze(0) == query.unsqueeze(1)).float()  # (n, rows): the query's rows
    heads = mine.sum(dim=1).clamp_min(1).view(n, 1, 1, 1)
    chosen = a * mine.unsqueeze(-1)
    if layout.key_position is not None:
        row = _on_key_grid(layout, chosen.reshape(n, blocks, queries, keys).sum(dim=2))
    elif layout.key_grid is not None:
        row = chosen.sum(dim=1).reshape(n, 1, *layout.key_grid)
    else:  # each of the query's rows spreads its weights over its own block's tokens
        spread = chosen.reshape(n, blocks, queries, keys).sum(dim=2).reshape(n, rows)
        row = on_grid(token_sum(spread))
    return AttentionCapture(_by_max(row / heads), weighted, parts=parts, marker=marker)


def _on_key_grid(layout: TokenLayout, per_block_key: Tensor) -> Tensor:
    """(n, blocks, keys) values -> (n, 1, h, w) on the keys' grid, summed per cell."""
    assert layout.key_position is not None and layout.key_grid is not None
    n = per_block_key.shape[0]
    cells = layout.key_position.to(per_block_key.device).flatten()
    keep = cells >= 0
    out = per_block_key.new_zeros(n, layout.key_grid[0] * layout.key_grid[1])
    out.index_add_(1, cells[keep], per_block_key.reshape(n, -1)[:, keep])
    return out.reshape(n, 1, *layout.key_grid)


def _received_on_key_grid(layout: TokenLayout, a: Tensor) -> Tensor:
    """The attention each cell of the keys' grid receives, (n, 1, h, w) / max: mean over
    the queries of each block of rows, then over the blocks (windows) whose keys hold it."""
    n, rows, keys = a.shape
    blocks = rows // layout.queries
    ones = torch.ones(1, blocks, keys, device=a.device).expand(n, -1, -1)
    per_key = a.reshape(n, blocks, layout.queries, keys).mean(dim=2)
    return _by_max(_on_key_grid(layout, per_key) / _on_key_grid(layout, ones).clamp_min(1))


def _criss_cross_capture(
    weights: Tensor, inputs: tuple[object, ...], output: object
) -> AttentionCapture:
    """Criss-cross attention (N, H, W, H + W): each position's column, then its row."""
    a = weights.float()
    n, h, w, _ = a.shape
    column, row = a[..., :h], a[..., h:]
    # key (k, j) receives column[:, i, j, k] from every i; key (i, l) receives row[:, i, j, l].
    received = column.sum(dim=1).transpose(1, 2) + row.sum(dim=2)
    received = _by_max(received.unsqueeze(1))
    x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
    out = output[0] if isinstance(output, tuple | list) else output
    if isinstance(out, Tensor) and x is not None and out.shape == x.shape:
        weighted = (out - x).float().abs().mean(dim=1, keepdim=True)
    else:
        weighted = received
    parts = {"mean received": (received, received)}
    cells = _query_cells((h, w), n, a.device)
    if cells is None:
        return AttentionCapture(received, weighted, parts=parts)
    qy, qx = cells // w, cells % w
    photos = torch.arange(n, device=a.device)
    cross = a.new_zeros(n, h, w)
    cross[photos, :, qx] = column[photos, qy, qx]  # the query's column
    cross[photos, qy, :] += row[photos, qy, qx]  # and its row
    return AttentionCapture(
        _by_max(cross.unsqueeze(1)), weighted, parts=parts, marker=cell_marker(cells, h, w)
    )


def _pooling_capture(
    layout: TokenLayout, weights: Tensor, inputs: tuple[object, ...]
) -> AttentionCapture:
    """Softmax pooling (GCNet): the weights over positions, mean over heads, / max; the
    weighted map is |map ⊗ x|, each position's share of the pooled context."""
    a = weights.float()
    n = a.numel() // (layout.rows * layout.keys)
    grid = _received_on_key_grid(layout, a.reshape(n, layout.rows, layout.keys))
    x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
    if x is not None and x.dim() == 4 and x.shape[2:] == grid.shape[2:]:
        return AttentionCapture(grid, (grid * x.float()).abs().mean(dim=1, keepdim=True))
    return AttentionCapture(grid, grid)
