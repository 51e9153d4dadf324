"""Experiment: how would the trunk's own class evidence score if it were spread along the
affinities of finer features? No training: this asks which map shapes are worth learning.

The class activation map (CAM) of the trunk's top-1 class marks the most telling part of
the object at stride 32. Spreading it k times along A = softmax_j(cos(f_i, f_j) / T) of a
finer feature map f (block 10, stride 16, or block 4, stride 8) carries it over the region
that looks alike (as affinity-based refinement of class maps does). Scored on boxes-dev,
or with ``--train-boxes`` on the held-out training photos that have boxes drawn by us.

    uv run python experiments/pool_gate.py cache        # once
    uv run python experiments/spread_targets.py [--train-boxes experiments/boxes-train.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from pool_gate import CACHE, DATA, box_scores, propagate, training_split, trunk
from torch import Tensor

from attnviz.evaluation.evaluate import read_boxes


def spread(cam: Tensor, fine: Tensor, temperature: float, steps: int) -> Tensor:
    """The CAM on the fine grid, its negative part cut, spread as the shipped gate does."""
    evidence = F.interpolate(cam, fine.shape[-2:], mode="bilinear", align_corners=False)
    return propagate(evidence.clamp(min=0), fine, temperature, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-boxes", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    net = trunk()
    if args.train_boxes:
        split = torch.load(CACHE / "holdout.pt", weights_only=True)
        photos = read_boxes(args.train_boxes, DATA / "imagenette-train")
        where = {path: i for i, path in enumerate(training_split()[:500])}
        index = torch.tensor([where[p.path] for p in photos])
        split = {k: v[index] for k, v in split.items()}
    else:
        split = torch.load(CACHE / "dev.pt", weights_only=True)
        photos = read_boxes(DATA / "boxes-dev" / "boxes.csv", DATA / "boxes-dev" / "images")
    head = split["h"].float()
    cam = torch.einsum("nchw,nc->nhw", head, net._fc.weight[split["l"].argmax(1)])[:, None]

    def report(name: str, maps: Tensor) -> None:
        s = box_scores(maps, photos)
        print(f"| {name} | {s['pointing']:.1f} | {s['energy']:.1f} | {s['maxboxacc_v2']:.1f} |")

    print("| map | pointing | energy | MaxBoxAccV2 |\n| --- | --- | --- | --- |")
    report("CAM (stride 32)", cam)
    for block, key in ((10, "b10"), (4, "b4")):
        fine = split[key].float()
        for temperature in (0.05, 0.1):
            for steps in (1, 3):
                maps = spread(cam, fine, temperature, steps)
                report(f"CAM spread on block {block}, T {temperature}, {steps} steps", maps)
                if (block, temperature, steps) == (4, 0.1, 3):
                    report("the same, cubed (sharper; the box scores barely move)", maps**3)


if __name__ == "__main__":
    main()
