"""EfficientNet-Lite0 hosting one attention block of another family after a trunk block.

The trunk is the plain ``EfficientNetLite`` (no gates) under ``trunk.``, run through its
own ``stem``, ``run_blocks`` and ``head``; the inserted block lives under
``attention.block{N}``, named like the CBAM gates of ``lite0-cbam`` so the layer names say
where it sits. Block 10 ends the stride-16 stage: 112 channels on a 14 x 14 grid at 224 px.
Both blocks start as the identity (zero-initialised BatchNorm on their residual branch), so
a host with untrained blocks predicts exactly what the trunk predicts.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnviz.models.deformable import ResidualDeformable
from attnviz.models.efficientnet_lite import LITE0_STAGES, EfficientNetLite
from attnviz.models.gates import Switchable
from attnviz.models.nonlocal_block import NonLocalBlock

HOST_BLOCK = 10  # the last block of the stride-16 stage


def block_channels(index: int) -> int:
    """Output channels of Lite0's block ``index``."""
    ends = 0
    for stage in LITE0_STAGES:
        ends += stage.repeats
        if index < ends:
            return stage.out_ch
    raise ValueError(f"Lite0 has no block {index} (0..{ends - 1})")


class Lite0WithBlock(Switchable, nn.Module):
    """``trunk`` blocks 0..N, then ``attention.block{N}``, then the rest of the trunk."""

    def __init__(self, block: nn.Module, after: int = HOST_BLOCK, num_classes: int = 1000):
        super().__init__()
        self.trunk = EfficientNetLite(num_classes=num_classes)
        self.after = after
        self.attention = nn.ModuleDict({f"block{after}": block})

    @property
    def block(self) -> nn.Module:
        return self.attention[f"block{self.after}"]

    def features_before(self, x: Tensor) -> Tensor:
        """The trunk's features entering the inserted block."""
        return self.trunk.run_blocks(self.trunk.stem(x), 0, self.after + 1)

    def forward_from(self, features: Tensor) -> Tensor:
        """Logits from the features entering the block (training caches those)."""
        if self.gates_enabled:
            features = self.block(features)
        x = self.trunk.run_blocks(features, self.after + 1)
        return self.trunk.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from(self.features_before(x))


def lite0_nonlocal(after: int = HOST_BLOCK) -> Lite0WithBlock:
    """An untrained Lite0 hosting a fresh non-local block (logits scaled by 1 / sqrt(inter)) after
    block ``after``."""
    return Lite0WithBlock(NonLocalBlock(block_channels(after), scale=True), after)


def lite0_deform(after: int = HOST_BLOCK) -> Lite0WithBlock:
    """An untrained Lite0 hosting a fresh residual deformable convolution after block ``after``."""
    return Lite0WithBlock(ResidualDeformable(block_channels(after)), after)


def lite0_host(kind: str, after: int = HOST_BLOCK) -> Lite0WithBlock:
    """The host of family ``kind`` ("nonlocal" or "deform"), with a fresh block."""
    hosts = {"nonlocal": lite0_nonlocal, "deform": lite0_deform}
    if kind not in hosts:
        raise ValueError(f"no Lite0 host for {kind!r}; choose one of {', '.join(hosts)}")
    return hosts[kind](after)
