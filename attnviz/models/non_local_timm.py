"""timm's non-local block (``timm.layers.non_local_attn.NonLocalAttn``, embedded Gaussian).

Its attention is HW x HW: ``A = softmax_keys(theta(x)^T phi(x) * scale)``, row q holding
where position q reads from (timm names theta ``t`` and phi ``p``). attnviz recomputes
``A`` from the block's input and its own 1x1 convolutions and shows:

- ``weights``: the row of a query point, divided by its maximum. The point is ``--query``
  (:data:`~attnviz.attention.protocol.QUERY_POINTS`), else the position of strongest
  response: where the block's added term ``|output - x|`` (mean over channels) is largest,
  or, when that term is zero everywhere (timm zero-initialises its BatchNorm), the position
  that receives the most attention. ``marker`` holds the point, at the centre of its cell.
- ``parts["mean received"]``: the attention each position receives, averaged over all
  queries, divided by its maximum.

Both weighted maps are ``|map ⊗ x|`` averaged over channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture, cell_marker, query_cells

RECEIVED = "mean received"


def attention_matrix(block: nn.Module, x: Tensor) -> Tensor:
    """(N, HW, HW) attention of a ``NonLocalAttn`` for its input; rows are queries."""
    theta = block.t(x).flatten(2)  # type: ignore[operator]
    phi = block.p(x).flatten(2)  # type: ignore[operator]
    return torch.softmax(theta.transpose(1, 2) @ phi * block.scale, dim=2)


def _peak_normalised(values: Tensor) -> Tensor:
    return values / values.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)


def capture_timm_non_local(
    block: nn.Module, inputs: tuple[Tensor, ...], output: object
) -> AttentionCapture:
    """The adapter's capture of timm's ``NonLocalAttn``, as the module docstring says: the query
    point's row with its marker, and the mean received attention as a part."""
    x = inputs[0]
    n, _, h, w = x.shape
    attention = attention_matrix(block, x)
    received = attention.mean(dim=1).reshape(n, 1, h, w)
    response = (output - x).abs().mean(dim=1).flatten(1) if isinstance(output, Tensor) else None
    strongest = received.flatten(1).argmax(dim=1)
    if response is not None:
        responds = response.amax(dim=1) > 0
        strongest = torch.where(responds, response.argmax(dim=1), strongest)
    cells = query_cells(strongest, h, w)
    row = attention[torch.arange(n, device=x.device), cells].reshape(n, 1, h, w)
    weights, received = _peak_normalised(row), _peak_normalised(received)
    marker = cell_marker(cells, h, w)
    main = AttentionCapture.from_weighted(weights, weights * x)
    mean = AttentionCapture.from_weighted(received, received * x)
    return AttentionCapture(
        main.weights, main.weighted, parts={RECEIVED: (mean.weights, mean.weighted)},
        marker=marker,
    )  # fmt: skip
