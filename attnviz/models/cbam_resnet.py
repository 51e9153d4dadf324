"""ResNet with CBAM in every block, laid out like the CBAM authors' ImageNet code.

Module names (``conv1``, ``layerX.Y.{conv,bn}N``, ``downsample.{0,1}``, ``layerX.Y.cbam``,
``fc``) match Woo et al.'s ``MODELS/model_resnet.py`` so their published checkpoints load
strictly. CBAM gates the residual branch after its last BatchNorm, before the addition.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnviz.errors import UsageError
from attnviz.models.cbam import CBAM

# depth -> (block is a bottleneck, blocks per stage)
DEPTHS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
}
STAGE_PLANES = (64, 128, 256, 512)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """A residual block whose branch ends in CBAM, gated before the addition."""

    expansion = 1
    relu: nn.ReLU
    downsample: nn.Module | None
    cbam: CBAM

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.cbam(self.residual(x)) + shortcut)


class BasicBlock(ResidualBlock):
    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.cbam = CBAM(planes * self.expansion, 16)

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
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
        self.cbam = CBAM(planes * self.expansion, 16)

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


BlockType = type[BasicBlock] | type[Bottleneck]


class CBAMResNet(nn.Module):
    def __init__(
        self,
        block: BlockType,
        layers: tuple[int, int, int, int],
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
            stage, in_ch = self._make_stage(block, in_ch, planes, blocks, 1 if i == 0 else 2)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # Adaptive instead of the authors' AvgPool2d(7): same result at 224 px, no parameters,
        # and smaller inputs (tests, thumbnails) still work.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _make_stage(
        block: BlockType, in_ch: int, planes: int, blocks: int, stride: int
    ) -> tuple[nn.Sequential, int]:
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
        layers = [block(in_ch, planes, stride, downsample)]
        layers += [block(out_ch, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers), out_ch

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def cbam_resnet(depth: int, num_classes: int = 1000) -> nn.Module:
    """ResNet-``depth`` (18, 34, 50 or 101) with CBAM in every block, randomly initialised."""
    if depth not in DEPTHS:
        raise UsageError(f"no CBAM ResNet of depth {depth}; choose one of {sorted(DEPTHS)}")
    bottleneck, layers = DEPTHS[depth]
    return CBAMResNet(Bottleneck if bottleneck else BasicBlock, layers, num_classes)
