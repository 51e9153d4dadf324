"""The gate slot of attnviz's Lite0 models: what every trainable spatial gate shares.

A *Lite0 gate* sits after a block of the frozen EfficientNet-Lite0 trunk and is trained
by self-distillation (``attnviz train --family NAME``). Each family lives in its own file
(cbam.py, psa.py, multiscale.py, lightweight.py, dynamic.py, bam.py) and builds on the
pieces here; ``gate_families.py`` maps family names to them.

Every Lite0 gate makes its map the same way: the family computes logits l, which are
standardised over each photo's positions (z), and ``M = sigmoid(sharpness z + offset)``
(4 and -4), so the map uses the whole [0, 1] scale whatever the logits' level, which
moves with the photo and the input size. It then scales the features by
``floor + (1 - floor) M``: the floor says how much the gate may change them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture, keep_maps, kept_maps

PoolOrder = Literal["avg-max", "max-avg"]


def channel_pool(x: Tensor, order: PoolOrder) -> Tensor:
    """Stack the channel-wise mean and max of ``x`` (N, C, H, W) into (N, 2, H, W)."""
    avg = x.mean(dim=1, keepdim=True)
    mx = x.amax(dim=1, keepdim=True)
    return torch.cat([avg, mx] if order == "avg-max" else [mx, avg], dim=1)


def standardize_per_image(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance per image and channel over the spatial positions.

    The raw pooled maps of a deep layer have a large, image-dependent scale; without this
    the gate's convolution sees wildly varying inputs and training diverges.
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


def standardised_sigmoid(logits: Tensor, sharpness: Tensor, offset: Tensor) -> Tensor:
    """M = sigmoid(sharpness z + offset), z the logits standardised over each photo's
    positions: the map uses the [0, 1] scale whatever the logits' level, which moves with
    the photo and the input size. Logits that do not vary give sigmoid(offset) everywhere."""
    return torch.sigmoid(sharpness * standardize_per_image(logits, eps=1e-3) + offset)


def floored(weights: Tensor, floor: Tensor | float) -> Tensor:
    """What multiplies the features: floor + (1 - floor) M, so a gate can shut without
    starving what comes after it."""
    return floor + (1.0 - floor) * weights


def applied_caption(floor: float, map_name: str = "M") -> str | None:
    """How a floored map is applied, for panel 2's caption (None: the plain M)."""
    return f"{floor:g} + {1 - floor:g} {map_name}" if floor else None


def add_map_buffers(gate: nn.Module) -> None:
    """The buffers that say how a Lite0 gate makes and applies its map (a weights file
    carries them, so it says how its maps were made): floor (set by training), and the
    sharpness and offset of the standardised sigmoid."""
    gate.register_buffer("floor", torch.tensor(0.0))
    gate.register_buffer("sharpness", torch.tensor(4.0))
    gate.register_buffer("offset", torch.tensor(-4.0))


def mean_filled(x: Tensor, weights: Tensor, fill: float) -> Tensor:
    """``x * weights``, with suppressed positions refilled by ``fill`` x the spatial mean."""
    if fill == 0.0:
        return x * weights
    return x * weights + (1.0 - weights) * fill * x.mean(dim=(2, 3), keepdim=True)


def seed_centre_tap(conv: nn.Conv2d, input_channel: int, slope: float) -> None:
    """Zero a conv's kernels except its centre tap on one input channel (set to ``slope``)."""
    kh, kw = conv.kernel_size
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, input_channel, kh // 2, kw // 2] = slope


def computed_map(gate: nn.Module, x: Tensor) -> Tensor:
    """In a gate's forward: its ``attention_map`` of ``x``, kept for its capture."""
    weights = gate.attention_map(x)  # type: ignore[operator]
    keep_maps(gate, x, weights=weights)  # the capture reads it instead of recomputing
    return weights


def captured_map(gate: nn.Module, x: Tensor) -> Tensor:
    """In a gate's capture: the map its forward kept for ``x`` (or computed now)."""
    kept = kept_maps(gate, x)
    return kept["weights"] if kept else gate.attention_map(x)  # type: ignore[operator]


@runtime_checkable
class Lite0Gate(Protocol):
    """A spatial gate that training can seed and fit.

    floor:            the share of the features a gate keeps where its map is 0.
    offset:           where the map passes 0.5: M = sigmoid(sharpness z + offset).
    fill:             share of the features' spatial mean that fills suppressed positions;
                      training raises it early on, inference uses 0 (the plain product).
    attention_map:    (N, C, H, W) -> the weights shown, M, (N, 1, H, W) in (0, 1).
    gated:            the gate's output given the features and their attention_map.
    seed:             start from ``slope`` x the channel mean where the family sees that
                      mean, otherwise as flat as the family allows (the standardisation
                      removes the logits' level).
    shape_parameters: the parameters that set the map's shape (learnt more slowly than
                      the rest).
    """

    floor: Tensor
    offset: Tensor
    fill: float

    def attention_map(self, x: Tensor) -> Tensor: ...

    def gated(self, x: Tensor, weights: Tensor) -> Tensor: ...

    def seed(self, slope: float) -> None: ...

    def shape_parameters(self) -> list[Tensor]: ...


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


class StandardisedGate(nn.Module):
    """What the multiplicative Lite0 gates share: M from the family's ``logits`` by the
    standardised sigmoid, ``F_out = (floor + (1 - floor) M) * F``, mean-filled in training.

    Subclasses define ``logits`` (N, C, H, W) -> (N, 1, H, W), optionally ``part_logits``
    (each named part's own logits, shown by ``--parts`` through the same sigmoid), and
    the rest of ``Lite0Gate``.
    """

    floor: Tensor
    sharpness: Tensor
    offset: Tensor

    def __init__(self) -> None:
        super().__init__()
        add_map_buffers(self)
        self.fill = 0.0

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def part_logits(self, x: Tensor) -> Mapping[str, Tensor]:  # noqa: ARG002 - no parts
        return {}

    def squashed(self, logits: Tensor) -> Tensor:
        return standardised_sigmoid(logits, self.sharpness, self.offset)

    def attention_map(self, x: Tensor) -> Tensor:
        return self.squashed(self.logits(x))

    def applied(self, weights: Tensor) -> Tensor:
        return floored(weights, self.floor)

    def gated(self, x: Tensor, weights: Tensor) -> Tensor:
        return mean_filled(x, self.applied(weights), self.fill)

    def forward(self, x: Tensor) -> Tensor:
        return self.gated(x, computed_map(self, x))

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:  # noqa: ARG002
        features = inputs[0]
        weights = captured_map(self, features)
        parts = {name: self.squashed(lg) for name, lg in self.part_logits(features).items()}
        return AttentionCapture.of_gate(
            weights, features, parts, self.applied, applied_caption(float(self.floor))
        )
