"""Modulated deformable convolution, DCNv2 (Zhu et al., CVPR 2019), via torchvision.

A plain convolution over ``x`` predicts, at every output position, an offset (dy, dx) for
each of the k x k kernel taps and a modulation mask per tap; ``torchvision.ops.
deform_conv2d`` then samples the input bilinearly at ``p + p_k + offset_k`` and weighs each
sample by its mask. The offset/mask convolution starts at zero, so a new layer samples the
plain grid with every mask at sigmoid(0) = 0.5, the DCNv2 paper's initialisation (the
mask is a sigmoid, in (0, 1), as in the paper; no 2 x sigmoid rescaling).

Deformable convolution has no attention weights of its own; it is an implicit attention
(family ``deformable``): where the kernels sample, and how much each sample counts.
attnviz shows the density of sampling locations (``sampling_density``).

``ResidualDeformable`` wraps it as ``x + BN(dcn(x))`` with the BatchNorm's scale at zero,
so it can be inserted into a pretrained trunk as the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

from attnviz.attention.protocol import AttentionCapture


class ModulatedDeformConv2d(nn.Module):
    """DCNv2: a k x k convolution whose taps move (offsets) and are weighed (masks)."""

    attention_family = "deformable"

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        # Default: "same" output size at stride 1 for odd kernels.
        self.padding = _pair(dilation * (kernel_size - 1) // 2 if padding is None else padding)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default
        # 2 offsets (dy, dx) per tap, then one mask logit per tap, on the output grid.
        self.offset_mask = nn.Conv2d(
            in_ch,
            3 * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        nn.init.zeros_(self.offset_mask.weight)
        assert self.offset_mask.bias is not None  # built with one
        nn.init.zeros_(self.offset_mask.bias)

    def offsets_and_masks(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Offsets (N, 2kk, H', W') in torchvision's layout — (dy, dx) of tap 0, of tap 1 …,
        taps in row-major order — and masks (N, kk, H', W') in (0, 1)."""
        out = self.offset_mask(x)
        taps = self.kernel_size[0] * self.kernel_size[1]
        return out[:, : 2 * taps], torch.sigmoid(out[:, 2 * taps :])

    def forward(self, x: Tensor) -> Tensor:
        offset, mask = self.offsets_and_masks(x)
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        """Where the kernels sample, and how much the samples count.

        - ``weights``: the modulated sampling density on the input grid (see
          ``sampling_density``), divided by its maximum so the densest cell is 1.
        - ``parts["sampling density (unweighted)"]``: the same without the masks: how many
          samples (bilinear shares of them) land on each cell, whatever they are worth.
        - ``parts["mean modulation"]``: the mean mask over the k x k taps at each output
          position, already in (0, 1).
        - ``weighted``: mean |output| over channels, for the main map and both parts.
        """
        x = inputs[0]
        with torch.no_grad():
            offset, mask = self.offsets_and_masks(x)
            out = output if isinstance(output, Tensor) else self.forward(x)
        size = (x.shape[2], x.shape[3])
        # Detached like every capture: a capture must not keep the layer's graph alive.
        weighted = out.detach().abs().mean(dim=1, keepdim=True)
        density = self.sampling_density(offset, mask, size)
        unweighted = self.sampling_density(offset, None, size)
        modulation = mask.mean(dim=1, keepdim=True)
        return AttentionCapture(
            _by_max(density),
            weighted,
            parts={
                "sampling density (unweighted)": (_by_max(unweighted), weighted),
                "mean modulation": (modulation, weighted),
            },
        )

    def sampling_points(self, offset: Tensor) -> tuple[Tensor, Tensor]:
        """(y, x) input coordinates, each (N, kk, H', W'), of every tap at every output
        position: ``p * stride - padding + tap * dilation + offset``, torchvision's rule."""
        n, _, out_h, out_w = offset.shape
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        dev, dt = offset.device, offset.dtype
        tap_y = (torch.arange(kh, device=dev, dtype=dt) * dh).repeat_interleave(kw)
        tap_x = (torch.arange(kw, device=dev, dtype=dt) * dw).repeat(kh)
        base_y = torch.arange(out_h, device=dev, dtype=dt) * sh - ph
        base_x = torch.arange(out_w, device=dev, dtype=dt) * sw - pw
        offset = offset.reshape(n, kh * kw, 2, out_h, out_w)
        y = base_y[None, None, :, None] + tap_y[None, :, None, None] + offset[:, :, 0]
        x = base_x[None, None, None, :] + tap_x[None, :, None, None] + offset[:, :, 1]
        return y, x

    def sampling_density(
        self, offset: Tensor, mask: Tensor | None, size: tuple[int, int]
    ) -> Tensor:
        """How much sampling lands on each input cell: (N, 1, H, W).

        Every tap at every output position samples one point (``sampling_points``); the
        point is split over its four neighbouring cells with its bilinear weights, exactly
        the shares ``deform_conv2d`` reads from them, and each share is multiplied by the
        tap's mask when ``mask`` is given. Shares that fall on the zero padding outside the
        grid are dropped, since they read nothing. With zero offsets, stride 1 and "same"
        padding, an interior cell thus receives k*k whole samples and a border cell fewer.
        """
        y, x = self.sampling_points(offset)
        n = y.shape[0]
        h, w = size
        share = torch.ones_like(y) if mask is None else mask.to(y.dtype)
        y, x, share = y.flatten(1), x.flatten(1), share.flatten(1)
        y0, x0 = y.floor(), x.floor()
        density = torch.zeros(n, h * w, device=y.device, dtype=y.dtype)
        for cy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for cx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
                index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long()
                density.scatter_add_(1, index, torch.where(inside, share * wy * wx, 0.0))
        return density.reshape(n, 1, h, w)


class ResidualDeformable(nn.Module):
    """``x + BN(dcn(x))`` with the BatchNorm's scale at zero: the identity at the start."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.dcn = ModulatedDeformConv2d(
            channels, channels, kernel_size, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn(self.dcn(x))


def _by_max(values: Tensor) -> Tensor:
    """Divided by the maximum of each image's map (a map of zeros stays zeros)."""
    peak = values.flatten(1).amax(dim=1).clamp_min(torch.finfo(values.dtype).tiny)
    return values / peak[:, None, None, None]
