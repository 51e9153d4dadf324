"""A dynamic-kernel spatial gate: the conv over the channel pools is chosen per input.

As in dynamic convolution (Chen et al., CVPR 2020) and CondConv (Yang et al., 2019): K
kernels W_1..W_K (k x k over P = [mean_c F; max_c F], standardised per image) are mixed
with weights a(F) = softmax(MLP(global mean of F) / T) into one kernel per photo; the
logits are ``l = conv(P, sum_k a_k W_k)``, M is their standardised sigmoid
(``gates.StandardisedGate``) and ``F_out = (floor + (1 - floor) M) * F``. A photo whose
global content calls for a wider or a sharper map gets one.

The capture's weights are M; its parts hold each of the K kernels' own map (its logits
through the same standardised sigmoid), named "kernel k", so a figure can show what the
mixture chose between.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.models.gates import StandardisedGate, channel_pool, standardize_per_image

# Spread of the kernels around the seed: identical kernels would get identical gradients
# and the router none at all, so the mixture could never learn to choose.
SEED_JITTER = 0.01


class DynamicKernelGate(StandardisedGate):
    """Spatial gate whose k x k kernel is a per-photo softmax mixture of K kernels."""

    attention_family = "dynamic-spatial"

    def __init__(
        self,
        channels: int,
        kernels: int = 4,
        kernel_size: int = 7,
        hidden: int = 8,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.temperature = temperature
        # No biases: the standardisation removes the logits' level.
        self.weight = nn.Parameter(torch.zeros(kernels, 2, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight.view(kernels, -1), a=5**0.5)
        self.router = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, kernels)
        )

    def mixture(self, x: Tensor) -> Tensor:
        """Each photo's kernel weights a(F), (N, K), rows summing to 1."""
        return torch.softmax(self.router(x.mean(dim=(2, 3))) / self.temperature, dim=1)

    def logits_with(self, pooled: Tensor, weight: Tensor) -> Tensor:
        """Conv of each photo's pooled maps with its own kernel, weight (N, 2, k, k)."""
        n, _, h, w = pooled.shape
        # One grouped conv, one group per photo, instead of a Python loop over the batch.
        out = F.conv2d(
            pooled.reshape(1, n * 2, h, w), weight, padding=self.kernel_size // 2, groups=n
        )
        return out.view(n, 1, h, w)

    def pooled(self, x: Tensor) -> Tensor:
        return standardize_per_image(channel_pool(x, "avg-max"))

    def logits(self, x: Tensor) -> Tensor:
        weight = torch.einsum("nk,kchw->nchw", self.mixture(x), self.weight)
        return self.logits_with(self.pooled(x), weight)

    def part_logits(self, x: Tensor) -> dict[str, Tensor]:
        pooled, n = self.pooled(x), len(x)
        return {
            f"kernel {k + 1}": self.logits_with(pooled, self.weight[k].expand(n, -1, -1, -1))
            for k in range(len(self.weight))
        }

    def seed(self, slope: float) -> None:
        # Every kernel starts near the channel mean's centre tap and the router's last layer
        # at zero, so the mixture is uniform and the gate starts as a seeded CBAM gate.
        k = self.kernel_size // 2
        with torch.no_grad():
            self.weight.normal_(0.0, SEED_JITTER)
            self.weight[:, 0, k, k] += slope
        last = self.router[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def shape_parameters(self) -> list[Tensor]:
        return [self.weight]
