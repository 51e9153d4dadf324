"""The hooks attnviz puts on a model: registered and removed in one place.

Capturing maps, discovering layers, describing them and Grad-CAM all read a model through
these three. :func:`on_output` hands each call's inputs and output to a function;
:func:`around_calls` runs one function as a call starts and one as it ends (also when it
raises); :func:`removing` collects the handles and removes them when its block ends, also
on error, so no hook outlives the work that needed it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from torch import nn

OnOutput = Callable[[tuple, object], None]  # (the call's inputs, its output)
OnStart = Callable[[tuple], None]  # (the call's inputs)


class Removable(Protocol):
    """What hooks hand back: torch's RemovableHandle, or attnviz's own clean-up."""

    def remove(self) -> None: ...


def on_output(module: nn.Module, fn: OnOutput) -> Removable:
    """A forward hook that gives ``fn`` each call's inputs and output (never changing it)."""

    def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
        fn(inputs, output)

    return module.register_forward_hook(hook)


def around_calls(module: nn.Module, start: OnStart, end: OnOutput) -> list[Removable]:
    """Hooks that run ``start(inputs)`` as each call begins and ``end(inputs, output)`` as it
    ends; ``end`` runs also when the call raises, so the two stay paired."""

    def before(_module: nn.Module, inputs: tuple) -> None:
        start(inputs)

    def after(_module: nn.Module, inputs: tuple, output: object) -> None:
        end(inputs, output)

    return [
        module.register_forward_pre_hook(before),
        module.register_forward_hook(after, always_call=True),
    ]


@contextmanager
def removing() -> Iterator[list[Removable]]:
    """A list to add hook handles to; every one is removed when the block ends."""
    handles: list[Removable] = []
    try:
        yield handles
    finally:
        for handle in reversed(handles):
            handle.remove()
