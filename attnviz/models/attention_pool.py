"""Attention-gated pooling: the classifier averages the positions a spatial gate picks.

"Learn to Pay Attention" (Jetley et al., ICLR 2018) scores local features against the
network's global descriptor and pools by those scores; Attention U-Net (Oktay et al., 2018)
gates its skip features additively with a coarser gating signal. Here the gate's scores are
then spread along the affinities of finer features, a non-local step (Wang et al., 2018)
whose attention weights are fixed by feature similarity, as in affinity-based refinement of
class maps (Ahn and Kwak, CVPR 2018):

    s = psi(ReLU(W_x x + up(W_g g)))          x: block 10, 14 x 14; g: head, 7 x 7
    A = softmax_j(cos(f_i, f_j) / T)          f: block 4, 28 x 28 (stride 8)
    z = standardise(A^k up(s))                per photo, over the fine grid's positions
    M = sigmoid(sharpness z + offset)         what attnviz shows
    pooled = mean(avg(floor + (1 - floor) M) * g)    logits = fc(gain * pooled)

where avg averages the map over each head cell. ``M`` is a stride-8 map: the coarse scores
say where the class evidence is, the affinities carry it to the whole region that looks
alike, so the map covers more of the object than its most telling part.
Standardising the spread scores on each photo before the sigmoid fixes their level, which
moves from photo to photo and with the input size (it closed an unstandardised gate at
448 px), so panel 2's absolute scale shows where the gate opens. The price: M passes 0.5
one standard deviation above the photo's mean score, so only the part of the photo that
stands out reads near 1 (a sixth of it, were the scores normal); on a photo the object
fills, that is its most distinct part. The trunk itself is untouched; the gate only re-weights
which positions the classifier averages. ``floor`` keeps part of the plain average, so the
trunk's context still reaches the classifier and its predictions hold while ``M`` picks
the object (see ``training.pool``).

The gate looks at the photo at the scale it was trained for: at any other input size the
trunk runs twice, on the input (the head features the classifier pools) and on the input
resized to ``GATE_VIEW`` pixels (what the map is made from). Block 4's features, which the
affinities come from, change character with the scale: made from the input itself, the
previous gate's map of 224-px photos enlarged to 448 traced edges and lost 8.5 points of
box energy (pretrained/README.md). Made from the view, it is close to the map of the photo
at 224 px at every size (below 224 the view is the small photo enlarged, so some detail is
gone).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture, keep_maps, kept_maps
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.gates import Switchable, applied_caption, floored, standardised_sigmoid

FINE_BLOCK = 4  # the last block of the stride-8 stage: 40 channels, 28 x 28 at 224 px
LOCAL_BLOCK = 10  # the last block of the stride-16 stage: 112 channels, 14 x 14 at 224 px
HEAD_CHANNELS = 1280
GATE_VIEW = 224  # pixels: the input scale the gate makes its map at, the one it was trained at


def upsample(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Maps (N, C, h, w) resized to ``size`` (H, W), bilinear."""
    return F.interpolate(x, size, mode="bilinear", align_corners=False)


def affinities(fine: Tensor, temperature: float) -> Tensor:
    """(N, HW, HW): row i is softmax_j(cos(f_i, f_j) / temperature) over the fine grid."""
    unit = F.normalize(fine.flatten(2), dim=1)
    return (unit.transpose(1, 2) @ unit / temperature).softmax(dim=-1)


def spread_along(scores: Tensor, fine: Tensor, temperature: float, steps: int) -> Tensor:
    """A^steps up(scores) on the fine grid, (N, 1, H, W), A = ``affinities(fine, ...)``."""
    affinity = affinities(fine, temperature)
    spread = upsample(scores, fine.shape[-2:]).flatten(2).transpose(1, 2)  # (N, HW, 1)
    for _ in range(steps):
        spread = affinity @ spread
    return spread.transpose(1, 2).reshape(len(fine), 1, *fine.shape[-2:])


class AttentionGatedPooling(nn.Module):
    """Additive attention gate over local features, steered by the head's features and
    spread along finer features' affinities, that weights the head's average pooling."""

    attention_family = "attention-pool"
    # Saved buffers, so the weights file says how its map is made.
    floor: Tensor
    temperature: Tensor
    spread_steps: Tensor
    sharpness: Tensor
    offset: Tensor

    def __init__(
        self,
        local_channels: int = 112,
        global_channels: int = HEAD_CHANNELS,
        hidden: int = 64,
        context: int = 3,
        floor: float = 0.7,
        temperature: float = 0.1,
        spread_steps: int = 3,
        sharpness: float = 4.0,
        offset: float = -4.0,
    ) -> None:
        super().__init__()
        self.local = nn.Sequential(nn.Conv2d(local_channels, hidden, 1), nn.BatchNorm2d(hidden))
        self.gating = nn.Sequential(nn.Conv2d(global_channels, hidden, 1), nn.BatchNorm2d(hidden))
        self.psi = nn.Conv2d(hidden, 1, context, padding=context // 2)
        # Saved with the weights, so a file says how its map was made: how much of the plain
        # average is kept, how sharply and how far the scores spread, and how the
        # standardised scores become M (sigmoid(sharpness z + offset): with the defaults
        # M passes 0.5 one standard deviation above the photo's mean score).
        self.register_buffer("floor", torch.tensor(float(floor)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("spread_steps", torch.tensor(int(spread_steps)))
        self.register_buffer("sharpness", torch.tensor(float(sharpness)))
        self.register_buffer("offset", torch.tensor(float(offset)))

    def scores(self, local: Tensor, head: Tensor) -> Tensor:
        """s, the coarse logits on the local features' grid, (N, 1, h, w)."""
        gating = upsample(self.gating(head), local.shape[-2:])
        return self.psi(F.relu(self.local(local) + gating))

    def spread(self, scores: Tensor, fine: Tensor) -> Tensor:
        """A^k up(s) on the fine grid, (N, 1, H, W)."""
        return spread_along(scores, fine, float(self.temperature), int(self.spread_steps))

    def squash(self, spread: Tensor) -> Tensor:
        """M = sigmoid(sharpness z + offset), z the spread scores standardised over each
        photo's positions."""
        return standardised_sigmoid(spread, self.sharpness, self.offset)

    def attention_map(self, fine: Tensor, local: Tensor, head: Tensor) -> Tensor:
        """M, (N, 1, H, W) on the fine features' grid, in (0, 1)."""
        return self.squash(self.spread(self.scores(local, head), fine))

    def weighted(self, head: Tensor, weights: Tensor) -> Tensor:
        """The head's features times the applied weights, floor + (1 - floor) M, averaged
        over each head cell: what the classifier averages."""
        return (
            F.adaptive_avg_pool2d(floored(weights, self.floor), (head.shape[-2], head.shape[-1]))
            * head
        )

    def pool(self, head: Tensor, weights: Tensor) -> Tensor:
        """(N, C): what the classifier gets, the weighted features averaged."""
        return self.weighted(head, weights).mean(dim=(2, 3))

    def forward(
        self, fine: Tensor, local: Tensor, head: Tensor, pooled: Tensor | None = None
    ) -> Tensor:
        """The map made from ``fine``, ``local`` and ``head``, and the classifier's input:
        ``pooled`` (default ``head``: the same photo at another scale) weighted by it."""
        weights = self.attention_map(fine, local, head)
        keep_maps(self, fine, weights=weights)  # its capture reads it: affinities run once
        return self.pool(head if pooled is None else pooled, weights)

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:  # noqa: ARG002
        fine, local, head = inputs[0], inputs[1], inputs[2]
        pooled = inputs[3] if len(inputs) > 3 else head
        kept = kept_maps(self, fine)
        weights = kept["weights"] if kept else self.attention_map(fine, local, head)
        # Panel 3 shows what the classifier averages: the applied weights times the features.
        caption = applied_caption(float(self.floor))
        if pooled is not head:
            made = f"M made at {GATE_VIEW} px"
            caption = f"{caption}; {made}" if caption else made
        return AttentionCapture.from_weighted(weights, self.weighted(pooled, weights), caption)


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

    def features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The gate's inputs: block 4's and block 10's outputs and the head's features."""
        fine = self.trunk.run_blocks(self.trunk.stem(x), 0, FINE_BLOCK + 1)
        local = self.trunk.run_blocks(fine, FINE_BLOCK + 1, LOCAL_BLOCK + 1)
        return fine, local, self.trunk.head_features(self.trunk.run_blocks(local, LOCAL_BLOCK + 1))

    def logits(self, pooled: Tensor) -> Tensor:
        """The classifier on the gate's pooled features (their scale given back)."""
        return self.trunk._fc(self.pool_gain * pooled)

    def classify(self, fine: Tensor, local: Tensor, head: Tensor) -> Tensor:
        if not self.gates_enabled:
            return self.trunk._fc(head.mean(dim=(2, 3)))
        return self.logits(self.gate(fine, local, head))  # through __call__: hooks see the gate

    def forward(self, x: Tensor) -> Tensor:
        view = gate_view(x) if self.gates_enabled else None  # the bare trunk needs no view
        if view is None:
            return self.classify(*self.features(x))
        # The view first: a hook that keeps a trunk layer's last call (`--layer` on a trunk
        # module) sees the input's.
        seen = self.features(view)
        head = self.features(x)[2]
        return self.logits(self.gate(*seen, head))


def gate_view(x: Tensor) -> Tensor | None:
    """The input as the gate sees it: resized (bicubic, antialiased) to the area of a
    ``GATE_VIEW``-pixel square with the input's aspect ratio, no side under 32 pixels;
    None when it already is that size."""
    height, width = x.shape[-2:]
    scale = GATE_VIEW / (height * width) ** 0.5
    size = (max(32, round(height * scale)), max(32, round(width * scale)))
    if size == (height, width):
        return None
    resize = partial(F.interpolate, size=size, mode="bicubic", antialias=True, align_corners=False)
    try:  # in float32: antialiased resizing has no half-precision kernel on the CPU
        view = resize(x.float())
    except NotImplementedError:  # nor any kernel on some devices (MPS before torch 2.8)
        view = resize(x.float().cpu()).to(x.device)
    return view.to(x.dtype)
