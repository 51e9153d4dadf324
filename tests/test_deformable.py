"""DCNv2: the module against torchvision, the sampling density, the modulation, hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from attnviz.attention import attention_layers
from attnviz.attention.capture import capture_maps
from attnviz.models.deformable import ModulatedDeformConv2d, ResidualDeformable

UNWEIGHTED = "sampling density (unweighted)"


def _set_offsets(dcn: ModulatedDeformConv2d, dy: float, dx: float, mask_logit: float = 0.0) -> None:
    """The same offset (dy, dx) and mask for every tap everywhere, through the conv's bias."""
    taps = dcn.kernel_size[0] * dcn.kernel_size[1]
    with torch.no_grad():
        dcn.offset_mask.weight.zero_()
        dcn.offset_mask.bias.copy_(
            torch.cat([torch.tensor([dy, dx]).repeat(taps), torch.full((taps,), mask_logit)])
        )


def _randomise_offsets(dcn: ModulatedDeformConv2d, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = dcn.offset_mask.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
        dcn.offset_mask.bias.copy_(torch.randn(dcn.offset_mask.bias.shape, generator=generator))


def _density_by_deform_conv(
    dcn: ModulatedDeformConv2d, offset: Tensor, mask: Tensor | None, size: tuple[int, int]
) -> Tensor:
    """An independent oracle: torchvision itself, reading one-hot images.

    Channel c of the input is 1 at cell c and 0 elsewhere; a grouped all-ones kernel adds
    up, at every output position, what its (masked) samples read from cell c. Summed over
    the output positions, that is exactly how much sampling landed on cell c.
    """
    h, w = size
    n = offset.shape[0]
    cells = torch.eye(h * w).reshape(1, h * w, h, w).expand(n, -1, -1, -1).contiguous()
    ones = torch.ones(h * w, 1, *dcn.kernel_size)
    read = deform_conv2d(
        cells, offset, ones, None, dcn.stride, dcn.padding, dcn.dilation, mask=mask
    )
    return read.sum(dim=(2, 3)).reshape(n, 1, h, w)


def test_zero_offsets_sample_a_plain_grid() -> None:
    """3x3, stride 1, padding 1: interior cells get 9 samples, edges 6, corners 4."""
    dcn = ModulatedDeformConv2d(2, 3).eval()
    x = torch.randn(1, 2, 5, 6)
    capture = dcn.capture_attention((x,), dcn(x))
    counts = torch.full((5, 6), 9.0)
    counts[0, :] = counts[-1, :] = counts[:, 0] = counts[:, -1] = 6.0
    counts[0, 0] = counts[0, -1] = counts[-1, 0] = counts[-1, -1] = 4.0
    offset, mask = dcn.offsets_and_masks(x)
    assert torch.count_nonzero(offset) == 0 and torch.all(mask == 0.5)  # sigmoid(0)
    assert torch.equal(dcn.sampling_density(offset, None, (5, 6))[0, 0], counts)
    assert torch.equal(dcn.sampling_density(offset, mask, (5, 6))[0, 0], counts * 0.5)
    assert torch.allclose(capture.weights[0, 0], counts / 9)
    assert torch.allclose(capture.parts[UNWEIGHTED][0][0, 0], counts / 9)
    assert torch.all(capture.parts["mean modulation"][0] == 0.5)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"), [(3, 2, 1, 1), (3, 1, 2, 2), (5, 2, 0, 1)]
)
def test_zero_offsets_respect_stride_padding_dilation(
    kernel: int, stride: int, padding: int, dilation: int
) -> None:
    """Counts from a plain loop over output positions and taps."""
    dcn = ModulatedDeformConv2d(2, 2, kernel, stride, padding, dilation).eval()
    h, w = 9, 8
    x = torch.randn(1, 2, h, w)
    out = dcn(x)
    expected = torch.zeros(h, w)
    for oy in range(out.shape[2]):
        for ox in range(out.shape[3]):
            for ty in range(kernel):
                for tx in range(kernel):
                    y = oy * stride - padding + ty * dilation
                    x_ = ox * stride - padding + tx * dilation
                    if 0 <= y < h and 0 <= x_ < w:
                        expected[y, x_] += 1
    offset, _ = dcn.offsets_and_masks(x)
    assert torch.equal(dcn.sampling_density(offset, None, (h, w))[0, 0], expected)
    assert offset.shape[2:] == out.shape[2:]


def test_a_known_offset_moves_the_density() -> None:
    """A 1x1 kernel samples its own cell; offset dx = +1 moves every sample one cell right
    (column 0 is left empty, the last column's sample falls off the grid), and dx = 0.25
    splits each sample 3:1 between its cell and the next."""
    dcn = ModulatedDeformConv2d(1, 1, kernel_size=1).eval()
    x = torch.randn(1, 1, 3, 4)
    _set_offsets(dcn, 0.0, 1.0)
    density = dcn.sampling_density(*dcn.offsets_and_masks(x), (3, 4))[0, 0]
    assert torch.allclose(density, torch.tensor([[0.0, 0.5, 0.5, 0.5]] * 3))
    _set_offsets(dcn, 0.0, 0.25, mask_logit=100.0)  # masks of 1
    density = dcn.sampling_density(*dcn.offsets_and_masks(x), (3, 4))[0, 0]
    assert torch.allclose(density, torch.tensor([[0.75, 1.0, 1.0, 1.0]] * 3))
    # Two rows down with a 3x3 kernel: the plain grid's counts shifted down by two rows,
    # the top two rows now read only by the samples reaching into them from above.
    dcn3 = ModulatedDeformConv2d(1, 1).eval()
    _set_offsets(dcn3, 2.0, 0.0)
    x = torch.randn(1, 1, 6, 5)
    capture = dcn3.capture_attention((x,), dcn3(x))
    density = capture.parts[UNWEIGHTED][0][0, 0] * 9  # max is 9: an interior count
    assert torch.allclose(density[:, 2], torch.tensor([0.0, 3.0, 6.0, 9.0, 9.0, 9.0]))
    assert torch.allclose(density[:, 0], torch.tensor([0.0, 2.0, 4.0, 6.0, 6.0, 6.0]))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"), [(3, 1, 1, 1), (3, 2, 1, 2), (5, 1, 2, 1)]
)
def test_density_is_what_deform_conv2d_reads(
    kernel: int, stride: int, padding: int, dilation: int
) -> None:
    """With random fractional offsets and masks, the density equals torchvision's reading."""
    dcn = ModulatedDeformConv2d(3, 2, kernel, stride, padding, dilation).eval()
    _randomise_offsets(dcn, seed=kernel + stride + dilation)
    x = torch.randn(2, 3, 7, 6)
    offset, mask = dcn.offsets_and_masks(x)
    assert offset.abs().max() > 1  # samples really move, off the grid too
    for m in (mask, None):
        ours = dcn.sampling_density(offset, m, (7, 6))
        assert torch.allclose(ours, _density_by_deform_conv(dcn, offset, m, (7, 6)), atol=1e-5)


def test_output_and_capture_match_deform_conv2d() -> None:
    dcn = ModulatedDeformConv2d(4, 5, stride=2, dilation=2).eval()
    _randomise_offsets(dcn, seed=3)
    x = torch.randn(2, 4, 9, 8)
    raw = F.conv2d(x, dcn.offset_mask.weight, dcn.offset_mask.bias, 2, dcn.padding, 2)
    offset, mask = raw[:, :18], torch.sigmoid(raw[:, 18:])
    expected = deform_conv2d(x, offset, dcn.weight, dcn.bias, 2, dcn.padding, 2, mask=mask)
    output = dcn(x)
    assert torch.allclose(output, expected, atol=1e-6)

    capture = dcn.capture_attention((x,), output)
    density = _density_by_deform_conv(dcn, offset, mask, (9, 8))
    assert torch.allclose(capture.weights, density / density.amax((2, 3), keepdim=True), atol=1e-5)
    assert capture.weights.amax(dim=(2, 3)).allclose(torch.ones(2, 1))
    modulation = capture.parts["mean modulation"][0]
    assert torch.allclose(modulation, mask.mean(1, keepdim=True))
    assert modulation.shape == (2, 1, 5, 4) and modulation.std() > 0
    assert torch.allclose(capture.weighted, expected.abs().mean(1, keepdim=True), atol=1e-6)


def test_residual_starts_as_identity_and_hooks_are_removed() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ResidualDeformable(8)).eval()
    assert [name for name, _ in attention_layers(model)] == ["1.dcn"]
    x = torch.randn(1, 3, 6, 6)
    features = model[0](x)
    assert torch.equal(model(x), features)
    with capture_maps(model, "all") as captured:
        model(x)
    assert captured["1.dcn"].weights.shape == (1, 1, 6, 6)
    assert all(not m._forward_hooks for m in model.modules())
