"""The Lite0 gate families by name: ``--family NAME`` and ``lite0-NAME``.

A factory gets the channel count of the features it gates (40, 112, 320 or 1280 on
Lite0). A new family is a module built on ``gates.py`` plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from attnviz.errors import UsageError
from attnviz.models.bam import BAMGate
from attnviz.models.cbam import SpatialGate
from attnviz.models.dynamic import DynamicKernelGate
from attnviz.models.gates import Lite0Gate
from attnviz.models.lightweight import DepthwiseSeparableGate
from attnviz.models.multiscale import DilatedSpatialAttention
from attnviz.models.psa import PyramidSpatialAttention

GATE_FAMILIES: dict[str, Callable[[int], nn.Module]] = {
    "cbam": lambda _channels: SpatialGate(7, standardize=True, squash=True),
    "psa": lambda _channels: PyramidSpatialAttention(),
    "multiscale": lambda _channels: DilatedSpatialAttention(),
    "lightweight": DepthwiseSeparableGate,
    "dynamic": DynamicKernelGate,
    "bam": BAMGate,
}


def build_gate(family: str, channels: int) -> nn.Module:
    """A fresh gate of ``family`` for features with ``channels`` channels."""
    if family not in GATE_FAMILIES:
        known = ", ".join(GATE_FAMILIES)
        raise UsageError(f"unknown gate family {family!r}; known: {known}")
    gate = GATE_FAMILIES[family](channels)
    assert isinstance(gate, Lite0Gate), f"{type(gate).__name__} lacks the Lite0 gate interface"
    return gate
