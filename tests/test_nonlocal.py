"""The non-local block: its definition, the query-point map, the mean received, hooks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention import attention_layers
from attnviz.attention.capture import capture_maps
from attnviz.attention.protocol import query_points
from attnviz.errors import UsageError
from attnviz.models.nonlocal_block import NonLocalBlock

H, W = 3, 4


def _one_hot(index: int) -> Tensor:
    grid = torch.zeros(H * W)
    grid[index] = 1.0
    return grid.reshape(H, W)


def _set_1x1(conv: nn.Conv2d, weight: list[list[float]]) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight)[:, :, None, None])
        if conv.bias is not None:
            conv.bias.zero_()


def _hand_built(strength: float) -> NonLocalBlock:
    """4 channels, 2 inter channels: query i's logit for key j is strength * x1_i * x0_j.

    theta(x) = strength * x1 (each query's eagerness), phi(x) = x0 (the keys' salience),
    g(x) = 5 * x0, and W_z copies the attended value back onto channel 2. With the
    BatchNorm at unit scale (eval, fresh statistics), z - x = y / sqrt(1 + eps) on
    channel 2.
    """
    block = NonLocalBlock(4, inter=2).eval()
    _set_1x1(block.theta, [[0, strength, 0, 0], [0, 0, 0, 0]])
    _set_1x1(block.phi, [[1, 0, 0, 0], [0, 0, 0, 0]])
    _set_1x1(block.g, [[5, 0, 0, 0], [0, 0, 0, 0]])
    _set_1x1(block.W_z, [[0, 0], [0, 0], [1, 0], [0, 0]])
    with torch.no_grad():
        block.bn.weight.fill_(1.0)
    return block


def test_query_map_on_a_hand_built_case() -> None:
    """Keys: salience 2 at cell 5, 1 at cell 10, 0 elsewhere; query eagerness log(3) at the
    default query. exp(log 3 * salience) = 9, 3, 1: the row divided by its max is 1 at cell
    5, 1/3 at cell 10 and 1/9 elsewhere, and the mean received follows from the same
    logits for every query."""
    block = _hand_built(math.log(3.0))
    eager = torch.zeros(H * W)
    eager[7] = 1.0  # only cell 7 (row 1, col 3) looks anywhere in particular
    salience = 2 * _one_hot(5) + _one_hot(10)
    x = torch.stack([salience, eager.reshape(H, W), torch.zeros(H, W), torch.zeros(H, W)])[None]
    capture = block.capture_attention((x,), block(x))

    expected = torch.full((H * W,), 1 / 9)
    expected[5], expected[10] = 1.0, 1 / 3
    # The default query is where the block changes most: only cell 7's output differs from
    # the uniform mean of g, and it gathers more of the salient value (5 * 2).
    assert torch.allclose(capture.weights.flatten(), expected, atol=1e-6)
    assert capture.weights.flatten().argmax().item() == 5
    assert torch.allclose(capture.marker, torch.tensor([[(3 + 0.5) / W, (1 + 0.5) / H]]))

    # Every other query attends uniformly (1/12 each); cell 7 with 9, 3, 1 over a sum of 22.
    column_mean = torch.full((H * W,), (11 / 12 + 1 / 22) / 12)
    column_mean[5] = (11 / 12 + 9 / 22) / 12
    column_mean[10] = (11 / 12 + 3 / 22) / 12
    received, received_weighted = capture.parts["mean received"]
    assert torch.allclose(received.flatten(), column_mean / column_mean.max(), atol=1e-6)
    # g = 5 * x0, so mean |g| over the 2 inter channels is 2.5 * salience.
    assert torch.allclose(
        received_weighted.flatten(), received.flatten() * 2.5 * salience.flatten()
    )


def test_query_points_override_the_default() -> None:
    block = _hand_built(math.log(3.0))
    eager = torch.tensor([[1.0, 1, -1, -1]] * H)  # left half seeks salience, right avoids it
    salience = 2 * _one_hot(5) + _one_hot(10)
    x = torch.stack([salience, eager, torch.zeros(H, W), torch.zeros(H, W)])[None]
    x = x.repeat(2, 1, 1, 1)
    # Photo 0 queries (0.1, 0.9): column 0, row 2. Photo 1 queries the far corner (1.0, 0.0).
    points = torch.tensor([[0.1, 0.9], [1.0, 0.0]])
    with query_points(points):
        capture = block.capture_attention((x,), block(x))
    left, right = capture.weights.flatten(1)
    assert left.argmax().item() == 5 and left[10].item() == pytest.approx(1 / 3)
    # The right half's logits are -log 3 * salience: weights 1, 1/3, 1/9 reversed.
    assert right[5].item() == pytest.approx(1 / 9) and right[10].item() == pytest.approx(1 / 3)
    assert right.max().item() == pytest.approx(1.0) and right[0].item() == pytest.approx(1.0)
    expected_marker = torch.tensor([[0.5 / W, 2.5 / H], [3.5 / W, 0.5 / H]])
    assert torch.allclose(capture.marker, expected_marker)

    # One point serves the whole batch; a count that fits neither is the user's mistake.
    with query_points(torch.tensor([[0.9, 0.5]])):
        both = block.capture_attention((x,), block(x))
    assert torch.allclose(both.weights[0], both.weights[1])
    assert torch.allclose(both.marker, torch.tensor([[3.5 / W, 1.5 / H]] * 2))
    with query_points(torch.zeros(3, 2)), pytest.raises(UsageError, match="3 query points"):
        block.capture_attention((x,), block(x))


def test_identity_block_queries_the_centre() -> None:
    """A fresh block is the identity: no position is preferred, so the centre is queried."""
    block = NonLocalBlock(8).eval()
    x = torch.randn(2, 8, 5, 6)
    output = block(x)
    assert torch.equal(output, x)
    capture = block.capture_attention((x,), output)
    assert torch.allclose(capture.marker, torch.tensor([[3.5 / 6, 2.5 / 5]] * 2))
    assert torch.count_nonzero(capture.weighted) == 0  # the attention added nothing


def _reference(block: NonLocalBlock, x: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(z, f, g) straight from the paper's equations, with F.conv2d and einsum; the logits
    multiplied by ``scale``."""
    theta = F.conv2d(x, block.theta.weight, block.theta.bias)
    phi = F.conv2d(x, block.phi.weight, block.phi.bias)
    g = F.conv2d(x, block.g.weight, block.g.bias)
    if block.subsample:
        phi = F.max_pool2d(phi, 2, ceil_mode=True)
        g = F.max_pool2d(g, 2, ceil_mode=True)
    f = torch.einsum("ncij,nckl->nijkl", theta, phi) * scale
    n, h, w = f.shape[:3]
    f = f.reshape(n, h, w, -1).softmax(-1).reshape(f.shape)
    y = torch.einsum("nijkl,nckl->ncij", f, g)
    bn = block.bn
    wy = F.conv2d(y, block.W_z.weight)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    z = (wy - bn.running_mean[None, :, None, None]) * scale[None, :, None, None]
    return z + bn.bias[None, :, None, None] + x, f, g


@pytest.mark.parametrize(("subsample", "scale"), [(False, False), (True, False), (False, True)])
def test_matches_the_definition(subsample: bool, scale: bool) -> None:
    torch.manual_seed(0)
    block = NonLocalBlock(6, subsample=subsample, scale=scale).eval()
    with torch.no_grad():  # a trained-looking BatchNorm, so the residual is not zero
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.uniform_(-0.2, 0.2)
        block.bn.running_mean.uniform_(-0.1, 0.1)
        block.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 5, 7)
    z, f, g = _reference(block, x, 3**-0.5 if scale else 1.0)  # 3 inter channels
    output = block(x)
    assert torch.allclose(output, z, atol=1e-5)

    points = torch.tensor([[0.3, 0.7], [0.95, 0.05]])  # cells (col 2, row 3), (col 6, row 0)
    with query_points(points):
        capture = block.capture_attention((x,), output)
    rows = torch.stack([f[0, 3, 2], f[1, 0, 6]])[:, None]
    key_shape = (3, 4) if subsample else (5, 7)
    assert capture.weights.shape == (2, 1, *key_shape)
    assert torch.allclose(capture.weights, rows / rows.amax(dim=(2, 3), keepdim=True), atol=1e-6)
    assert capture.weights.amax(dim=(2, 3)).eq(1).all() and capture.weights.gt(0).all()
    received = f.mean(dim=(1, 2))[:, None]
    received = received / received.amax(dim=(2, 3), keepdim=True)
    assert torch.allclose(capture.parts["mean received"][0], received, atol=1e-6)
    assert torch.allclose(
        capture.parts["mean received"][1], received * g.abs().mean(1, keepdim=True), atol=1e-6
    )
    assert torch.allclose(capture.weighted, (z - x).abs().mean(1, keepdim=True), atol=1e-6)


def test_default_query_is_the_strongest_change() -> None:
    torch.manual_seed(1)
    block = NonLocalBlock(6).eval()
    with torch.no_grad():
        block.bn.weight.fill_(1.0)
    x = torch.randn(3, 6, 4, 5)
    output = block(x)
    capture = block.capture_attention((x,), output)
    strongest = (output - x).abs().sum(1).flatten(1).argmax(1)
    cells = torch.stack([(strongest % 5 + 0.5) / 5, (strongest // 5 + 0.5) / 4], 1)
    assert torch.allclose(capture.marker, cells)
    # The map is that query's row: recomputed directly, it agrees.
    f, _ = block.attention(x)
    row = f[torch.arange(3), strongest]
    assert torch.allclose(capture.weights.flatten(1), row / row.amax(1, keepdim=True))


def test_capture_hooks_are_removed() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), NonLocalBlock(8), nn.ReLU()).eval()
    assert [name for name, _ in attention_layers(model)] == ["1"]
    x = torch.randn(1, 3, 6, 6)
    with capture_maps(model, "all") as captured:
        model(x)
    assert set(captured) == {"1"}
    assert captured["1"].weights.shape == (1, 1, 6, 6)
    assert all(not m._forward_hooks for m in model.modules())
