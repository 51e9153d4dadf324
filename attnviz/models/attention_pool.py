"""Attention-gated pooling: the classifier averages the positions a spatial gate picks.

"Learn to Pay Attention" (Jetley et al., ICLR 2018) scores local features against the
network's global descriptor and pools by those scores; Attention U-Net (Oktay et al., 2018)
gates its skip features additively with a coarser gating signal:

    M = sigmoid(psi(ReLU(W_x x + up(W_g g))))        x: block 10, 14 x 14; g: head, 7 x 7
    pooled = mean((floor + (1 - floor) M) * up(g))    logits = fc(gain * pooled)

``M`` is what attnviz shows: a stride-16 map computed from the local features with the
head's features as the gating signal. The trunk itself is untouched; the gate only
re-weights which positions the classifier averages. ``floor`` keeps part of the plain
average, so the trunk's context still reaches the classifier while ``M`` picks the
object (training pulls ``M`` towards a small opening; see ``train_pool``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.gates import Switchable

LOCAL_BLOCK = 10  # the last block of the stride-16 stage: 112 channels, 14 x 14 at 224 px
HEAD_CHANNELS = 1280


def upsample(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    return F.interpolate(x, size, mode="bilinear", align_corners=False)


class AttentionGatedPooling(nn.Module):
    """Additive attention gate over local features, steered by the head's features, that
    weights the average pooling of the head's features."""

    attention_family = "attention-pool"

    def __init__(
        self,
        local_channels: int = 112,
        global_channels: int = HEAD_CHANNELS,
        hidden: int = 64,
        context: int = 3,
        floor: float = 0.5,
    ) -> None:
        super().__init__()
        self.local = nn.Sequential(nn.Conv2d(local_channels, hidden, 1), nn.BatchNorm2d(hidden))
        self.gating = nn.Sequential(nn.Conv2d(global_channels, hidden, 1), nn.BatchNorm2d(hidden))
        self.psi = nn.Conv2d(hidden, 1, context, padding=context // 2)
        # Saved with the weights: the file says how much of the plain average is kept.
        self.register_buffer("floor", torch.tensor(float(floor)))

    def attention_map(self, local: Tensor, head: Tensor) -> Tensor:
        """M, (N, 1, h, w) on the local features' grid, in (0, 1)."""
        gating = upsample(self.gating(head), local.shape[-2:])
        return torch.sigmoid(self.psi(F.relu(self.local(local) + gating)))

    def applied(self, weights: Tensor) -> Tensor:
        """What multiplies each position of the pooled features: floor + (1 - floor) M."""
        return self.floor + (1.0 - self.floor) * weights

    def weighted(self, head: Tensor, weights: Tensor) -> Tensor:
        """The head's features on the map's grid, times the applied weights."""
        return self.applied(weights) * upsample(head, weights.shape[-2:])

    def pool(self, head: Tensor, weights: Tensor) -> Tensor:
        """(N, C): what the classifier gets, the weighted features averaged."""
        return self.weighted(head, weights).mean(dim=(2, 3))

    def forward(self, local: Tensor, head: Tensor) -> Tensor:
        return self.pool(head, self.attention_map(local, head))

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        local, head = inputs[0], inputs[1]
        weights = self.attention_map(local, head)
        # Panel 3 shows what the classifier averages: the applied weights times the features.
        return AttentionCapture.from_weighted(weights, self.weighted(head, weights))


class Lite0AttentionPool(Switchable, nn.Module):
    """EfficientNet-Lite0 whose average pooling is gated by ``attention.pool``."""

    def __init__(self, num_classes: int = 1000, **gate: float) -> None:
        super().__init__()
        self.trunk = EfficientNetLite(num_classes=num_classes)
        self.attention = nn.ModuleDict({"pool": AttentionGatedPooling(**gate)})  # type: ignore[arg-type]
        # Pooling a sparse map lowers the pooled features' scale; one scalar gives it back.
        self.pool_gain = nn.Parameter(torch.ones(()))

    @property
    def gate(self) -> AttentionGatedPooling:
        return self.attention["pool"]  # type: ignore[return-value]

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The gate's inputs: block 10's output and the head's features."""
        local = self.trunk.run_blocks(self.trunk.stem(x), 0, LOCAL_BLOCK + 1)
        return local, self.trunk.head_features(self.trunk.run_blocks(local, LOCAL_BLOCK + 1))

    def logits(self, pooled: Tensor) -> Tensor:
        """The classifier on the gate's pooled features (their scale given back)."""
        return self.trunk._fc(self.pool_gain * pooled)

    def classify(self, local: Tensor, head: Tensor) -> Tensor:
        if not self.gates_enabled:
            return self.trunk._fc(head.mean(dim=(2, 3)))
        return self.logits(self.gate(local, head))  # through __call__: hooks see the gate

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(*self.features(x))
