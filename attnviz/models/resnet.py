"""ResNet with CBAM in every block or BAM between stages, laid out like the authors' code.

Module names (``conv1``, ``layerX.Y.{conv,bn}N``, ``downsample.{0,1}``, ``layerX.Y.cbam``,
``bam1..3``, ``fc``) match the ImageNet ``MODELS/model_resnet.py`` that CBAM (Woo et al.)
and BAM (Park et al.) share, so both groups' published checkpoints load strictly.
CBAM gates each block's residual branch after its last BatchNorm, before the addition;
BAM follows each of the first three stages.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from attnviz.errors import UsageError
from attnviz.models.bam import BAM
from attnviz.models.cbam import CBAM

# depth -> (block is a bottleneck, blocks per stage)
DEPTHS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
}
STAGE_PLANES = (64, 128, 256, 512)
Attention = Literal["cbam", "bam"]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution without bias, padded so that stride 1 keeps the size."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """A 1x1 convolution without bias."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """A residual block whose branch may end in CBAM, gated before the addition."""

    expansion = 1
    relu: nn.ReLU
    downsample: nn.Module | None
    cbam: CBAM | None

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        branch = self.residual(x)
        if self.cbam is not None:
            branch = self.cbam(branch)
        return self.relu(branch + shortcut)


class BasicBlock(ResidualBlock):
    """ResNet-18/34's block: two 3x3 convolutions, CBAM on the branch unless ``use_cbam`` is off."""

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        use_cbam: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.cbam = CBAM(planes * self.expansion, 16) if use_cbam else None

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """ResNet-50/101's block: 1x1, 3x3 (with the stride), 1x1 to four times ``planes``, CBAM on
    the branch unless ``use_cbam`` is off."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        use_cbam: bool = True,
    ) -> None:
        super().__init__()
        # Stride on the 3x3 conv (conv2) as in the authors' code; key names alone don't show it.
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.cbam = CBAM(planes * self.expansion, 16) if use_cbam else None

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


BlockType = type[BasicBlock] | type[Bottleneck]


class AttentionResNet(nn.Module):
    """A ResNet with CBAM in every block or BAM after the first three stages (``attention``),
    randomly initialised, with the authors' module names."""

    def __init__(
        self,
        block: BlockType,
        layers: tuple[int, int, int, int],
        attention: Attention = "cbam",
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        stages: list[nn.Sequential] = []
        for i, (planes, blocks) in enumerate(zip(STAGE_PLANES, layers, strict=True)):
            stride = 1 if i == 0 else 2
            stage, in_ch = self._make_stage(block, in_ch, planes, blocks, stride, attention)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        bams = [BAM(p * block.expansion) if attention == "bam" else None for p in STAGE_PLANES[:3]]
        self.bam1, self.bam2, self.bam3 = bams
        # Adaptive instead of the authors' AvgPool2d(7): same result at 224 px, no parameters,
        # and smaller inputs (tests, thumbnails) still work.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _make_stage(
        block: BlockType, in_ch: int, planes: int, blocks: int, stride: int, attention: Attention
    ) -> tuple[nn.Sequential, int]:
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
        cbam = attention == "cbam"
        layers = [block(in_ch, planes, stride, downsample, use_cbam=cbam)]
        layers += [block(out_ch, planes, use_cbam=cbam) for _ in range(1, blocks)]
        return nn.Sequential(*layers), out_ch

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage, bam in ((self.layer1, self.bam1), (self.layer2, self.bam2),
                           (self.layer3, self.bam3), (self.layer4, None)):  # fmt: skip
            x = stage(x)
            if bam is not None:
                x = bam(x)
        return self.fc(self.avgpool(x).flatten(1))


def attention_resnet(depth: int, attention: Attention, num_classes: int = 1000) -> nn.Module:
    """ResNet-``depth`` (18, 34, 50 or 101) with CBAM or BAM, randomly initialised."""
    if depth not in DEPTHS:
        raise UsageError(
            f"no {attention.upper()} ResNet of depth {depth}; choose one of {sorted(DEPTHS)}"
        )
    bottleneck, layers = DEPTHS[depth]
    return AttentionResNet(Bottleneck if bottleneck else BasicBlock, layers, attention, num_classes)


def cbam_resnet(depth: int, num_classes: int = 1000) -> nn.Module:
    """ResNet-``depth`` with CBAM in every block (the CBAM authors' ImageNet models)."""
    return attention_resnet(depth, "cbam", num_classes)


def bam_resnet(depth: int, num_classes: int = 1000) -> nn.Module:
    """ResNet-``depth`` with BAM after stages 1-3 (the BAM authors' ImageNet models)."""
    return attention_resnet(depth, "bam", num_classes)
