"""Which torch calls a forward pass makes, as attention discovery needs to see them.

Discovery (discovery.py) and the run-time tap (tap.py) both watch a module's forward through
:class:`torch.overrides.TorchFunctionMode`: every torch function, functional or method, passes
through the mode with its arguments. This module names the calls that matter (the kinds) and
the calls that only move positions around (layout), so both sides agree on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The calls that make or apply attention. Methods, functions and their in-place forms.
_KINDS: dict[object, str] = {
    torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    torch.Tensor.sigmoid_: "sigmoid",
    torch.sigmoid_: "sigmoid",
    F.hardsigmoid: "sigmoid",
    torch.special.expit: "sigmoid",
    torch.softmax: "softmax",
    torch.Tensor.softmax: "softmax",
    F.softmax: "softmax",
    torch.special.softmax: "softmax",
    F.scaled_dot_product_attention: "sdpa",
    torch.mul: "mul",
    torch.Tensor.mul: "mul",
    torch.Tensor.mul_: "mul",
    torch.Tensor.__mul__: "mul",
    torch.Tensor.__rmul__: "mul",
    torch.Tensor.__imul__: "mul",
    torch.matmul: "matmul",
    torch.bmm: "matmul",
    torch.Tensor.matmul: "matmul",
    torch.Tensor.bmm: "matmul",
    torch.Tensor.__matmul__: "matmul",
    torch.Tensor.__rmatmul__: "matmul",
    torch.einsum: "einsum",
}

# Calls that rearrange positions without mixing them: replayed on an index tensor to learn
# where each attention row ends up (discovery.py).
LAYOUT = frozenset({
    torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.permute,
    torch.permute, torch.Tensor.transpose, torch.transpose, torch.Tensor.contiguous,
    torch.Tensor.flatten, torch.flatten, torch.Tensor.unflatten, torch.Tensor.roll, torch.roll,
    torch.Tensor.__getitem__, torch.Tensor.narrow, torch.narrow, torch.Tensor.squeeze,
    torch.squeeze, torch.Tensor.unsqueeze, torch.unsqueeze, torch.Tensor.movedim,
    torch.movedim, torch.Tensor.moveaxis, torch.moveaxis, torch.Tensor.swapaxes, torch.swapaxes,
    torch.Tensor.swapdims, torch.swapdims, torch.Tensor.clone, torch.clone,
    torch.Tensor.view_as, torch.Tensor.reshape_as, torch.Tensor.expand, torch.Tensor.expand_as,
    torch.Tensor.unbind, torch.unbind, torch.Tensor.chunk, torch.chunk, torch.Tensor.split,
    torch.split, torch.Tensor.repeat, torch.Tensor.unfold, F.pad, torch.broadcast_to,
})  # fmt: skip

# Calls that keep every value's place and shape (dtype casts, dropout, activations).
SAME_PLACE = frozenset({
    torch.Tensor.to, torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16,
    torch.Tensor.type_as, torch.Tensor.detach, F.dropout, torch.dropout, torch.Tensor.__neg__,
    F.gelu, F.relu, F.silu, torch.relu, torch.Tensor.relu, F.leaky_relu, torch.tanh,
})  # fmt: skip

# Elementwise arithmetic: with a scalar (or a small parameter) the places stay.
ARITHMETIC = frozenset({
    torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__,
    torch.Tensor.__iadd__, torch.Tensor.add_, torch.sub, torch.Tensor.sub,
    torch.Tensor.__sub__, torch.Tensor.__rsub__, torch.Tensor.__isub__, torch.mul,
    torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__imul__,
    torch.Tensor.mul_, torch.div, torch.Tensor.div, torch.Tensor.__truediv__,
    torch.Tensor.__itruediv__, torch.Tensor.div_,
})  # fmt: skip

# Layout calls that repeat values (a gate expanded over channels varies only where it did).
EXPAND = frozenset({torch.Tensor.expand, torch.Tensor.expand_as, torch.Tensor.repeat,
                    torch.broadcast_to})  # fmt: skip

RESAMPLE = frozenset({F.interpolate})  # nn.Upsample and F.upsample* call it

# Calls that mix the channels of each position: the last dimension is features.
CHANNEL_MIX = frozenset({F.linear, F.layer_norm})


def kind_of(func: object) -> str | None:
    """``sigmoid``, ``softmax``, ``sdpa``, ``mul``, ``matmul``, ``einsum`` or None."""
    return _KINDS.get(func)


def tensors_in(args: tuple[object, ...], kwargs: dict[str, object] | None) -> list[Tensor]:
    """The tensors among a call's arguments, lists and tuples included (torch.cat's)."""
    found: list[Tensor] = []
    for value in (*args, *(kwargs or {}).values()):
        if isinstance(value, Tensor):
            found.append(value)
        elif isinstance(value, list | tuple):
            found += [v for v in value if isinstance(v, Tensor)]
    return found


def softmax_dim(args: tuple[object, ...], kwargs: dict[str, object]) -> int | None:
    """The ``dim`` a softmax call normalises over, as given (None when left implicit)."""
    if "dim" in kwargs:
        return kwargs["dim"]  # type: ignore[return-value]
    return args[1] if len(args) > 1 and isinstance(args[1], int) else None


def sdpa_weights(args: tuple[object, ...], kwargs: dict[str, object]) -> Tensor:
    """The attention probabilities a ``scaled_dot_product_attention`` call applies,
    ``softmax(q kᵀ · scale + mask)`` from its own arguments (dropout is off in eval)."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    given = dict(zip(names, args, strict=False)) | kwargs
    q, k = given["query"], given["key"]
    assert isinstance(q, Tensor) and isinstance(k, Tensor)
    if k.shape[-3:-2] != q.shape[-3:-2] and q.dim() >= 3 and given.get("enable_gqa"):
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = given.get("scale")
    scale = 1.0 / float(q.shape[-1]) ** 0.5 if scale is None else float(scale)  # type: ignore[arg-type]
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    if given.get("is_causal"):
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    mask = given.get("attn_mask")
    if isinstance(mask, Tensor):
        scores = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
            else scores + mask.float()
        )  # fmt: skip
    return torch.softmax(scores, dim=-1)
