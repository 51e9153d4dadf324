"""How much the shipped non-local block learnt, and how peaked its attention is.

- parameters of the block, and how far θ, φ, g and W_z moved from the initialisation the
  label fine-tuning (step 1 of the model card's recipe) started from (seed 0);
- on each photo given: the mean over queries of the largest attention weight (uniform
  attention over 14×14 would give 1/196), and how many distinct positions are some
  query's most attended one; the same largest weight for the block the fine-tuning
  started from, with its logits unscaled (the paper's form) and scaled by 1/sqrt(56).

    uv run python experiments/nonlocal_stats.py examples/*.jpg
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from attnviz.io import load_rgb
from attnviz.models import load_model
from attnviz.models.nonlocal_block import NonLocalBlock
from attnviz.models.registry import build_lite0_block


def largest_weight(block: NonLocalBlock, features: torch.Tensor) -> torch.return_types.max:
    f = block.attention(features)[0][0]  # (HW, HW)
    return f.max(dim=1)


@torch.inference_mode()
def main(photos: list[Path]) -> None:
    model = load_model("lite0-nonlocal", device="cpu")
    block = model.net.block
    torch.manual_seed(0)  # the fine-tuning's seed: the same random block it started from
    start = build_lite0_block("nonlocal", with_block=False).block
    assert isinstance(block, NonLocalBlock) and isinstance(start, NonLocalBlock)
    print(f"block parameters: {sum(p.numel() for p in block.parameters())}")
    for name in ("theta", "phi", "g", "W_z"):
        now, before = getattr(block, name).weight, getattr(start, name).weight
        print(f"{name}.weight moved {100 * float((now - before).norm() / before.norm()):.0f} %")
    for path in photos:
        features = model.net.features_before(model.preprocess([load_rgb(path)]))
        top = largest_weight(block, features)
        scaled = float(largest_weight(start, features).values.mean())
        start.logit_scale = 1.0
        unscaled = float(largest_weight(start, features).values.mean())
        start.logit_scale = block.logit_scale
        print(
            f"{path.name}: mean largest weight {float(top.values.mean()):.3f}, "
            f"{len(set(top.indices.tolist()))} distinct most-attended positions "
            f"of {len(top.indices)}; at the start: {unscaled:.3f} unscaled, {scaled:.3f} scaled"
        )


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
