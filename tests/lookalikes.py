"""Attention modules written the way their papers describe them and people write them, for
discovery tests. Each is attnviz's own look-alike from the published formula, not a copy of
anyone's code: attnviz must find them without knowing these classes.

The hosts are tiny convolutional networks (``host(block)``) so a forward pass is cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ------------------------------------------------------------------ CBAM spatial attention
# M_s(F) = σ(f^{7×7}([AvgPool_c(F); MaxPool_c(F)])), written in the usual ways.


class SpatialMapModule(nn.Module):
    """Returns the map (the caller multiplies); an nn.Sigmoid child; [mean, max]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], dim=1)
        return self.sigmoid(self.conv(pooled))


class SpatialGateFunctional(nn.Module):
    """Returns x * map; functional torch.sigmoid; BatchNorm before it; [max, mean]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([torch.amax(x, 1, keepdim=True), torch.mean(x, 1, keepdim=True)], 1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class SpatialGateInPlace(nn.Module):
    """Returns x * map; in-place sigmoid_; F.sigmoid elsewhere is not needed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.max(dim=1, keepdim=True).values, x.mean(dim=1, keepdim=True)], 1)
        logits = self.conv(pooled)
        return x * logits.sigmoid_()


class SpatialGateSequential(nn.Module):
    """The conv, BatchNorm and sigmoid in an nn.Sequential; F.sigmoid-free; x * map."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * self.spatial(pooled)


class ChannelGate(nn.Module):
    """CBAM's channel half (and SE's shape): a (N, C, 1, 1) sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return F.sigmoid(avg + mx)  # the caller multiplies


class CBAMBlock(nn.Module):
    """A residual block with CBAM as people write it: ``ca(out) * out`` then ``sa(out) * out``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.ca = ChannelGate(channels)
        self.sa = SpatialMapModule()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv(x))
        out = self.ca(out) * out
        out = self.sa(out) * out
        return F.relu(out + x)


# ------------------------------------------------------------------ BAM
# M(F) = σ(M_c(F) · M_s(F)) with both branches expanded to C × H × W; F' = F ⊗ (1 + M(F)).


class BAMChannel(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // 4), nn.ReLU(),
                                nn.Linear(channels // 4, channels))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.avg_pool2d(x, x.shape[2:]).flatten(1)
        return self.fc(pooled).unsqueeze(2).unsqueeze(3).expand_as(x)


class BAMSpatial(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.dilated = nn.Conv2d(channels // 4, channels // 4, 3, padding=4, dilation=4)
        self.final = nn.Conv2d(channels // 4, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.final(F.relu(self.dilated(F.relu(self.reduce(x))))).expand_as(x)


class BAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel_att = BAMChannel(channels)
        self.spatial_att = BAMSpatial(channels)

    def forward(self, x: Tensor) -> Tensor:
        att = 1 + F.sigmoid(self.channel_att(x) * self.spatial_att(x))
        return att * x


# ------------------------------------------------------------------ Attention U-Net gate
# α = σ(ψ(ReLU(W_x x + W_g g))), output x ⊗ α (Oktay et al., 2018).


class AttentionGate(nn.Module):
    def __init__(self, gate_channels: int, skip_channels: int, inner: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, inner, 1), nn.BatchNorm2d(inner))
        self.w_x = nn.Sequential(nn.Conv2d(skip_channels, inner, 1), nn.BatchNorm2d(inner))
        self.psi = nn.Sequential(nn.Conv2d(inner, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: Tensor, x: Tensor) -> Tensor:
        alpha = self.psi(F.relu(self.w_g(g) + self.w_x(x)))
        return x * alpha


class AttentionUNet(nn.Module):
    """Two levels, one gate on the skip; the output is a one- or K-channel mask."""

    def __init__(self, classes: int = 1) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.att = AttentionGate(8, 8, 4)
        self.dec = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.enc1(x)
        g = self.up(self.enc2(skip))
        gated = self.att(g, skip)
        return self.head(F.relu(self.dec(torch.cat([gated, g], dim=1))))


# ------------------------------------------------------------------ self-attention over positions


class NonLocalBlock(nn.Module):
    """Embedded Gaussian non-local block (Wang et al., 2018): softmax(θᵀφ) over HW × HW; with
    ``sub_sample`` the keys are max-pooled by 2."""

    def __init__(self, channels: int, sub_sample: bool = False) -> None:
        super().__init__()
        inner = channels // 2
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.w = nn.Sequential(nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))
        self.pool = nn.MaxPool2d(2) if sub_sample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).permute(0, 2, 1)  # (N, HW, C')
        phi = self.pool(self.phi(x)).flatten(2)  # (N, C', H'W')
        g = self.pool(self.g(x)).flatten(2).permute(0, 2, 1)  # (N, H'W', C')
        attention = F.softmax(torch.matmul(theta, phi), dim=-1)
        y = torch.matmul(attention, g).permute(0, 2, 1).contiguous().view(n, -1, h, w)
        return x + self.w(y)


class PositionAttention(nn.Module):
    """DANet's position attention module: S = softmax(Bᵀ C) over positions, out = γ D Sᵀ + x."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q = self.query(x).view(n, -1, h * w).permute(0, 2, 1)
        k = self.key(x).view(n, -1, h * w)
        attention = self.softmax(torch.bmm(q, k))
        v = self.value(x).view(n, -1, h * w)
        out = torch.bmm(v, attention.permute(0, 2, 1)).view(n, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """DANet's channel attention module: softmax over C × C channel affinities. Not spatial."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q = x.view(n, c, -1)
        energy = torch.bmm(q, q.permute(0, 2, 1))
        energy = energy.max(-1, keepdim=True)[0].expand_as(energy) - energy
        attention = F.softmax(energy, dim=-1)
        out = torch.bmm(attention, x.view(n, c, -1)).view(n, c, h, w)
        return self.beta * out + x


class SelfAttention(nn.Module):
    """SAGAN's self-attention: returns ``(out, attention)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, c, w, h = x.size()
        q = self.query_conv(x).view(n, -1, w * h).permute(0, 2, 1)
        k = self.key_conv(x).view(n, -1, w * h)
        attention = torch.softmax(torch.bmm(q, k), dim=-1)
        v = self.value_conv(x).view(n, -1, w * h)
        out = torch.bmm(v, attention.permute(0, 2, 1)).view(n, c, w, h)
        return self.gamma * out + x, attention


class CrissCross(nn.Module):
    """CCNet's criss-cross attention: each position attends to its column and row (H + W − 1
    keys: its own position is masked out of the column part)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        # column: (N, W, H, C') @ (N, W, C', H) -> (N, W, H, H) -> (N, H, W, H)
        q_col, k_col = q.permute(0, 3, 2, 1), k.permute(0, 3, 1, 2)
        self_mask = torch.diag(torch.full((h,), float("-inf"), device=x.device))
        energy_col = (torch.matmul(q_col, k_col) + self_mask).permute(0, 2, 1, 3)
        # row: (N, H, W, C') @ (N, H, C', W) -> (N, H, W, W)
        energy_row = torch.matmul(q.permute(0, 2, 3, 1), k.permute(0, 2, 1, 3))
        attention = F.softmax(torch.cat([energy_col, energy_row], dim=3), dim=3)
        att_col = attention[..., :h].permute(0, 2, 1, 3)  # (N, W, H, H)
        att_row = attention[..., h:]  # (N, H, W, W)
        out_col = torch.matmul(att_col, v.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        out_row = torch.matmul(att_row, v.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.gamma * (out_col + out_row) + x


class RecurrentCrissCross(nn.Module):
    """CCNet's head: the same criss-cross module twice (recurrence 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cca = CrissCross(channels)

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(2):
            x = self.cca(x)
        return x


# ------------------------------------------------------------------ gates with other shapes


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., 2021): gates (N, C, H, 1) and (N, C, 1, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(8, channels // 4)
        self.conv1 = nn.Conv2d(channels, inner, 1)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv_h = nn.Conv2d(inner, channels, 1)
        self.conv_w = nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        _, _, h, w = x.shape
        x_h = x.mean(dim=3, keepdim=True)  # (N, C, H, 1)
        x_w = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # (N, C, W, 1)
        y = F.relu(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid()
        return identity * a_w * a_h


class SimAM(nn.Module):
    """SimAM (Yang et al., 2021): parameter-free, x · σ(1 / E) with per-neuron energy."""

    def __init__(self, lam: float = 1e-4) -> None:
        super().__init__()
        self.lam = lam
        self.act = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        y = d / (4 * (d.sum(dim=[2, 3], keepdim=True) / n + self.lam)) + 0.5
        return x * self.act(y)


class ZPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.max(1, keepdim=True)[0], x.mean(1, keepdim=True)], dim=1)


class TripletGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = ZPool()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.conv(self.pool(x)))


class TripletAttention(nn.Module):
    """Triplet attention (Misra et al., 2021): the same kind of gate on the C×W and H×C
    planes (permuted tensors) and on H×W. Only the last branch is spatial."""

    def __init__(self) -> None:
        super().__init__()
        self.cw = TripletGate()
        self.hc = TripletGate()
        self.hw = TripletGate()

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.cw(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        x2 = self.hc(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        x3 = self.hw(x)
        return (x1 + x2 + x3) / 3


class TripletAttentionSpelt(TripletAttention):
    """The same branches, their planes turned with other spellings: movedim, and transpose
    with keyword dims (still only the H×W branch is spatial)."""

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.cw(x.movedim(2, 1).contiguous()).movedim(1, 2).contiguous()
        x2 = self.hc(x.transpose(dim0=1, dim1=3).contiguous())
        x2 = torch.transpose(x2, dim0=3, dim1=1).contiguous()
        return (x1 + x2 + self.hw(x)) / 3


class SqueezeExcite(nn.Module):
    """SE (Hu et al., 2018): channel attention only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 4, 1)
        self.fc2 = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class ECA(nn.Module):
    """ECA (Wang et al., 2020): a 1-D conv across channels, channel attention only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        y = F.adaptive_avg_pool2d(x, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * self.sigmoid(y).expand_as(x)


class SqueezeExciteLinear(nn.Module):
    """SE written with nn.Linear on pooled vectors: the sigmoid's output is (N, C), viewed
    as (N, C, 1, 1) and expanded over the map. Channel attention only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // 4), nn.ReLU(),
                                nn.Linear(channels // 4, channels), nn.Sigmoid())  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        y = self.fc(x.mean(dim=(2, 3))).view(n, c, 1, 1)
        return x * y.expand_as(x)


class GlobalContext(nn.Module):
    """GCNet's context block (Cao et al., 2019): softmax over positions of a 1×1 conv pools
    the features into one context vector, added back to every position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(nn.Conv2d(channels, channels // 4, 1), nn.ReLU(),
                                       nn.Conv2d(channels // 4, channels, 1))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        mask = self.conv_mask(x).view(n, 1, h * w)
        mask = torch.softmax(mask, dim=2).unsqueeze(-1)  # (N, 1, HW, 1)
        context = torch.matmul(x.view(n, 1, c, h * w), mask).view(n, c, 1, 1)
        return x + self.transform(context)


class ViewingGate(nn.Module):
    """A spatial gate whose code .view()s its input, as much research code does: it needs
    the standard memory layout, not channels_last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        flat = x.view(n, c, h * w)
        pooled = torch.stack([flat.mean(1), flat.amax(1)], dim=1).view(n, 2, h, w)
        return x * torch.sigmoid_(self.conv(pooled))


# ------------------------------------------------------------------ hosts


class Host(nn.Module):
    """A small classifier: stem (stride 4), the block under test, a pooled linear head."""

    def __init__(self, block: nn.Module, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.block = block
        self.head = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(self.stem(x))
        y = y[0] if isinstance(y, tuple) else y
        return self.head(y.mean(dim=(2, 3)))


class MapCallerHost(Host):
    """A host that multiplies by the map its block returns (``sa(x) * x``)."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x)
        y = self.block(y) * y
        return self.head(y.mean(dim=(2, 3)))


# ------------------------------------------------------------------ not spatial attention


class Swish(nn.Module):
    """x · σ(βx): an activation, not attention."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x)


class GatedLinearUnit(nn.Module):
    """GLU over channels: a · σ(b) with a, b two halves of one conv's output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.conv(x).chunk(2, dim=1)
        return a * b.sigmoid()


class LearntBlend(nn.Module):
    """x + σ(α) · conv(x), α one learnt scalar: a gate with no positions at all."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.sigmoid(self.alpha) * self.conv(x)


class FixedMask(nn.Module):
    """A learnt mask over positions, the same for every photo: σ(M) ⊗ x with M a parameter.
    Not attention: nothing depends on the photo."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.mask = nn.Parameter(torch.randn(1, 1, size, size))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.mask)


class HeadsFirstAttention(nn.Module):
    """Self-attention over positions whose heads axis comes before the photos (heads, N, L,
    L): rows of different photos are interleaved, which discovery cannot map back safely."""

    def __init__(self, channels: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (heads, N, d, L)
        a = torch.softmax(q.transpose(-2, -1) @ k, dim=-1)  # (heads, N, L, L)
        out = (a @ v.transpose(-2, -1)).permute(1, 0, 3, 2).reshape(n, c, h, w)
        return x + out


class OuterGate(nn.Module):
    """A sigmoid gate whose block holds another attention layer (coordinate attention):
    capturing both must give the outer gate the same map as capturing it alone."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.inner = CoordinateAttention(channels)
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        pooled = torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)
        return y * torch.sigmoid(self.conv(pooled))


class TwoSizes(nn.Module):
    """One non-local block used at two sizes in one forward pass."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = NonLocalBlock(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + F.interpolate(self.block(F.avg_pool2d(y, 2)), scale_factor=2.0)
