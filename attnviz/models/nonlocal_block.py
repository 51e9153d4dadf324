"""The non-local block, embedded-Gaussian form (Wang et al., CVPR 2018).

``theta``, ``phi`` and ``g`` are 1x1 convolutions to ``inter`` channels (C/2 by default);
every position i attends to every position j with ``f_ij = softmax_j(theta(x_i) . phi(x_j))``,
gathers ``y_i = sum_j f_ij g(x_j)``, and the block returns ``z = BN(W_z(y)) + x``. The
BatchNorm's scale starts at zero, as in the paper, so a new block is the identity and
cannot disturb a pretrained trunk it is inserted into.

``subsample`` max-pools ``phi`` and ``g`` by 2 (the paper's cheaper variant); it is off by
default so that the attention map covers exactly the HW positions of the input. The pool
uses ``ceil_mode`` so an odd grid keeps its last row and column.
``scale`` divides the logits by sqrt(inter), as scaled dot-product attention does (not in
the paper; ``lite0-nonlocal`` uses it, see pretrained/README.md for why).

What attnviz shows (family ``non-local``): attention is HW x HW, so the map is one row of
it, the attention one query position pays to every position (see ``capture_attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.attention.protocol import QUERY_POINTS, AttentionCapture
from attnviz.errors import UsageError


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block with a zero-initialised residual branch."""

    attention_family = "non-local"
    reads_query_point = True  # --query picks the position whose attention row is shown

    def __init__(
        self,
        channels: int,
        inter: int | None = None,
        subsample: bool = False,
        scale: bool = False,
    ) -> None:
        super().__init__()
        inter = inter or max(channels // 2, 1)
        self.subsample = subsample
        # scale: logits divided by sqrt(inter), as in scaled dot-product attention. The paper
        # has no such factor; without it, the logits of deep features are so large that the
        # softmax is almost one-hot and its gradient vanishes (measured on Lite0's block 10).
        self.logit_scale = inter**-0.5 if scale else 1.0
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.W_z = nn.Conv2d(inter, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        # Zero scale: z = x at the start (the paper's initialisation of the last BN).
        nn.init.zeros_(self.bn.weight)

    def keys_and_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """phi(x) and g(x), max-pooled by 2 when ``subsample`` is set."""
        phi, g = self.phi(x), self.g(x)
        if self.subsample:
            phi = F.max_pool2d(phi, 2, ceil_mode=True)
            g = F.max_pool2d(g, 2, ceil_mode=True)
        return phi, g

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f, g): the attention (N, HW, H'W') of every query over every key position, and
        the values g (N, inter, H', W'); H'W' = HW unless ``subsample``."""
        theta = self.theta(x).flatten(2)  # (N, inter, HW)
        phi, g = self.keys_and_values(x)
        logits = torch.einsum("nci,ncj->nij", theta, phi.flatten(2)) * self.logit_scale
        return logits.softmax(dim=-1), g

    def residual(self, x: Tensor) -> Tensor:
        """The change the block makes to its input: z - x = BN(W_z(y))."""
        f, g = self.attention(x)
        y = torch.einsum("nij,ncj->nci", f, g.flatten(2)).reshape(x.shape[0], -1, *x.shape[2:])
        return self.bn(self.W_z(y))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.residual(x)

    def _change(self, x: Tensor) -> Tensor:
        training = self.bn.training
        self.bn.eval()
        try:
            return self.residual(x)
        finally:
            self.bn.train(training)

    def capture_attention(self, inputs: tuple[Tensor, ...], output: object) -> AttentionCapture:
        """The attention row of one query position, its marker, and the mean received.

        - ``weights``: the attention the query pays to every (key) position, divided by its
          maximum, so the strongest position is 1 and all values lie in (0, 1]. The query is
          ``QUERY_POINTS`` when set (the photo covers the whole feature grid, so a fraction
          of the photo's width is the same fraction of the grid's), else the position of
          strongest response: where the block changes the features most, the largest
          sum over channels of |z - x|. A block that changes nothing (the identity it starts
          as) prefers no position, and the centre of the grid is used.
        - ``weighted``: mean |z - x| over channels: what the attention added at each
          position. Mean |z| would be dominated by the residual x, the features the block
          received, and look the same whatever the attention did.
        - ``parts["mean received"]``: the attention each key position receives, averaged
          over all queries (the mean of each column of the HW x HW matrix), divided by its
          maximum; its weighted map is that mean times mean |g| over channels, each
          position's average contribution to the block's outputs.
        - ``marker``: the query cell's centre as (x, y) fractions of the grid's width and
          height.
        """
        x = inputs[0]
        with torch.no_grad():
            f, g = self.attention(x)
            # The block's own output gives z - x exactly; recompute it only if the model
            # handed on something else (and without touching BatchNorm's running stats).
            change = output - x if isinstance(output, Tensor) else self._change(x)
        n, _, h, w = x.shape
        key_shape = g.shape[2:]
        query = self._query_cells(change, QUERY_POINTS.get())  # (N,) flat indices
        row = f[torch.arange(n, device=f.device), query]  # (N, H'W')
        weights = _by_max(row).reshape(n, 1, *key_shape)
        received = _by_max(f.mean(dim=1)).reshape(n, 1, *key_shape)
        received_weighted = received * g.abs().mean(dim=1, keepdim=True)
        qy, qx = query // w, query % w
        marker = torch.stack([(qx + 0.5) / w, (qy + 0.5) / h], dim=1).to(x.dtype)
        return AttentionCapture(
            weights,
            change.abs().mean(dim=1, keepdim=True),
            parts={"mean received": (received, received_weighted)},
            marker=marker,
        )

    @staticmethod
    def _query_cells(change: Tensor, points: Tensor | None) -> Tensor:
        """Flat indices (N,) of the query cells on the (H, W) grid of ``change``."""
        n, _, h, w = change.shape
        if points is None:
            response = change.abs().sum(dim=1).flatten(1)  # (N, HW)
            strongest = response.argmax(dim=1)
            centre = torch.full_like(strongest, (h // 2) * w + w // 2)
            return torch.where(response.amax(dim=1) > 0, strongest, centre)
        points = torch.as_tensor(points, dtype=torch.float64, device=change.device)
        points = points.reshape(-1, 2)
        if len(points) == 1:
            points = points.expand(n, 2)  # one point for every photo of the batch
        if len(points) != n:
            raise UsageError(f"{len(points)} query points for a batch of {n} photos")
        # Fractions in [0, 1]: 1.0 (the far edge) belongs to the last cell.
        col = (points[:, 0] * w).floor().clamp(0, w - 1).long()
        row = (points[:, 1] * h).floor().clamp(0, h - 1).long()
        return row * w + col


def _by_max(values: Tensor) -> Tensor:
    """Each row divided by its maximum (rows are softmax outputs: positive, max > 0)."""
    return values / values.amax(dim=-1, keepdim=True)
