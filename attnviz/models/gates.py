"""The gate slot of attnviz's Lite0 models: what every trainable spatial gate offers.

A *Lite0 gate* sits after a block of the frozen EfficientNet-Lite0 trunk and is trained
by self-distillation (``attnviz train --family NAME``). Each family lives in its own file
(cbam.py, psa.py, multiscale.py, lightweight.py, dynamic.py, bam.py); this module names
the small interface they share and maps family names to factories. A factory gets the
channel count of the features it gates (40, 112, 320 or 1280 on Lite0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from attnviz.errors import UsageError


@runtime_checkable
class Lite0Gate(Protocol):
    """A multiplicative (or BAM's residual) spatial gate that training can seed and fit.

    fill:             share of the features' spatial mean that fills suppressed positions;
                      training raises it early on, inference uses 0 (the plain product).
    attention_map:    (N, C, H, W) -> the weights shown, (N, 1, H, W) in (0, 1).
    gated:            the gate's output given the features and their attention_map.
    seed:             start as sigmoid(slope * standardised channel mean + bias) where the
                      family sees that mean, otherwise as flat as the family allows.
    shape_parameters: the parameters that set the map's shape (learnt more slowly than
                      its level: a fast slope turns maps into 0/1 cut-outs).
    """

    fill: float

    def attention_map(self, x: Tensor) -> Tensor: ...

    def gated(self, x: Tensor, weights: Tensor) -> Tensor: ...

    def seed(self, slope: float, bias: float) -> None: ...

    def shape_parameters(self) -> list[nn.Parameter]: ...


class Switchable:
    """A network whose attention can be switched off: ``gates_disabled()`` runs the bare
    trunk (the teacher during training, the reference for agreement and Grad-CAM)."""

    gates_enabled: bool = True

    @contextmanager
    def gates_disabled(self) -> Iterator[None]:
        previous, self.gates_enabled = self.gates_enabled, False
        try:
            yield
        finally:
            self.gates_enabled = previous


def mean_filled(x: Tensor, weights: Tensor, fill: float) -> Tensor:
    """``x * weights``, with suppressed positions refilled by ``fill`` x the spatial mean."""
    if fill == 0.0:
        return x * weights
    return x * weights + (1.0 - weights) * fill * x.mean(dim=(2, 3), keepdim=True)


class MultiplicativeGate(nn.Module):
    """What the multiplicative Lite0 gates share: F_out = M * F, mean-filled in training.

    Subclasses define ``attention_map`` (and the rest of ``Lite0Gate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fill = 0.0

    def attention_map(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def gated(self, x: Tensor, weights: Tensor) -> Tensor:
        return mean_filled(x, weights, self.fill)

    def forward(self, x: Tensor) -> Tensor:
        return self.gated(x, self.attention_map(x))


def seed_centre_tap(conv: nn.Conv2d, input_channel: int, slope: float) -> None:
    """Zero a conv's kernels except its centre tap on one input channel (set to ``slope``)."""
    kh, kw = conv.kernel_size
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, input_channel, kh // 2, kw // 2] = slope


def _cbam(channels: int) -> nn.Module:
    from attnviz.models.cbam import SpatialGate

    return SpatialGate(7, standardize=True, squash=True)


def _psa(channels: int) -> nn.Module:
    from attnviz.models.psa import PyramidSpatialAttention

    return PyramidSpatialAttention()


def _multiscale(channels: int) -> nn.Module:
    from attnviz.models.multiscale import DilatedSpatialAttention

    return DilatedSpatialAttention()


def _lightweight(channels: int) -> nn.Module:
    from attnviz.models.lightweight import DepthwiseSeparableGate

    return DepthwiseSeparableGate(channels)


def _dynamic(channels: int) -> nn.Module:
    from attnviz.models.dynamic import DynamicKernelGate

    return DynamicKernelGate(channels)


def _bam(channels: int) -> nn.Module:
    from attnviz.models.bam import BAMGate

    return BAMGate(channels)


GATE_FAMILIES: dict[str, Callable[[int], nn.Module]] = {
    "cbam": _cbam,
    "psa": _psa,
    "multiscale": _multiscale,
    "lightweight": _lightweight,
    "dynamic": _dynamic,
    "bam": _bam,
}


# Families whose gate adds to the features, F * (1 + ...), instead of multiplying them: they
# leave the trunk unchanged where their map is closed, not open.
RESIDUAL_FAMILIES = frozenset({"bam"})


def build_gate(family: str, channels: int) -> nn.Module:
    """A fresh gate of ``family`` for features with ``channels`` channels."""
    if family not in GATE_FAMILIES:
        known = ", ".join(GATE_FAMILIES)
        raise UsageError(f"unknown gate family {family!r}; known: {known}")
    gate = GATE_FAMILIES[family](channels)
    assert isinstance(gate, Lite0Gate), f"{type(gate).__name__} lacks the Lite0 gate interface"
    return gate
