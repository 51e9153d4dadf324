"""Forward hooks that capture attention maps, alive only inside a ``with`` block."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from attnviz.attention.protocol import AttentionCapture, attention_layers, capturer_for
from attnviz.errors import UsageError


def _parse_index(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        return None


def select_layers(model: nn.Module, selector: str | Sequence[str] | None = "-1") -> list[str]:
    """Names of the attention layers picked by ``selector``, in forward order.

    A selector is ``all``, a layer name, a glob (``attention.*``), an index (``-1`` is the
    deepest layer) or several of these separated by commas.
    """
    available = [name for name, _ in attention_layers(model)]
    if not available:
        raise UsageError("this model has no spatial attention layers to capture")
    tokens = selector.split(",") if isinstance(selector, str) else list(selector or ["-1"])
    chosen: set[str] = set()
    for token in (t.strip() for t in tokens if t.strip()):
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
        if not matches:
            close = difflib.get_close_matches(token, available, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(
                f"no attention layer matches {token!r}{hint}; available: {', '.join(available)}"
            )
        chosen.update(matches)
    return [name for name in available if name in chosen]


@contextmanager
def capture_maps(
    model: nn.Module, layers: str | Sequence[str] | None = "-1"
) -> Iterator[dict[str, AttentionCapture]]:
    """Capture the maps of the chosen layers during forward passes inside the block.

    The yielded dict maps layer name to its latest :class:`AttentionCapture`. Hooks are
    removed when the block ends, also on error; the model's own output is never touched,
    so models returning tuples or dicts work as they are.
    """
    modules = dict(attention_layers(model))
    names = select_layers(model, layers)
    captured: dict[str, AttentionCapture] = {}
    handles = []

    def hook_for(name: str):
        capture = capturer_for(modules[name]).capture  # type: ignore[union-attr]

        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            captured[name] = capture(inputs, output)

        return hook

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
