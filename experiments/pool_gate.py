"""Experiment: an attention gate on the classifier's pooling (Jetley et al., "Learn to Pay
Attention", ICLR 2018; the additive gate of Oktay et al.'s Attention U-Net).

The map is computed at a finer grid than the head (stride 16 from block 10, or stride 8
from block 4) from the local features and the head's features as the gating signal, and
weights the pooling of the head's features (upsampled to that grid): logits =
fc(gain * mean(M * up(h))). The trunk itself is untouched, so the gate changes only which
positions the classifier averages.

With ``--propagate K`` the gate's scores are spread K times along block 4's affinities
before the sigmoid (the shipped gate, ``attnviz.models.attention_pool``), the map is on
block 4's grid, the evidence term binds the scores instead of the map, and the classifier
weights each head cell by the map's mean over it.

    uv run python experiments/pool_gate.py cache      # once: features of every photo
    uv run python experiments/pool_gate.py train --local 10 --area 1
    uv run python experiments/pool_gate.py train --floor 0.5 --evidence 1 --propagate 3 --area 0.6

`cache` stores, for the split of `attnviz train` (9,000 photos shuffled with seed 0, the
first 500 held out) and for boxes-dev, block 4's and block 10's outputs, the head
features (fp16) and the trunk's logits.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.evaluation.evaluate import BoxedPhoto, read_boxes
from attnviz.evaluation.localization import LocalizationScores, to_unit_map
from attnviz.io import load_rgb
from attnviz.models import LoadedModel
from attnviz.models.attention_pool import spread_along
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.registry import get_spec, lite0_trunk_file
from attnviz.models.weights import read_state_dict
from attnviz.training.gates import find_images

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE = Path("/tmp/attnviz-pool")
LOCAL = {4: 40, 10: 112}  # block -> channels


def trunk() -> EfficientNetLite:
    net = EfficientNetLite().eval()
    net.load_state_dict(read_state_dict(lite0_trunk_file()), strict=False)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@torch.inference_mode()
def cache_features(net: EfficientNetLite, files: list[Path], path: Path) -> None:
    loaded = LoadedModel(net, get_spec("lite0-cbam"), torch.device("cpu"), 224)
    out: dict[str, list[Tensor]] = {"b4": [], "b10": [], "h": [], "l": []}
    for start in range(0, len(files), 50):
        x = loaded.preprocess([load_rgb(p) for p in files[start : start + 50]])
        b4 = net.run_blocks(net.stem(x), 0, 5)
        b10 = net.run_blocks(b4, 5, 11)
        h = net.head_features(net.run_blocks(b10, 11))
        for key, value in (("b4", b4), ("b10", b10), ("h", h)):
            out[key].append(value.half().contiguous())
        out["l"].append(net._fc(h.mean((2, 3))))
    torch.save({k: torch.cat(v) for k, v in out.items()}, path)


def cache(net: EfficientNetLite) -> None:
    CACHE.mkdir(exist_ok=True)
    files = training_split()
    photos = read_boxes(DATA / "boxes-dev" / "boxes.csv", DATA / "boxes-dev" / "images")
    cache_features(net, [p.path for p in photos], CACHE / "dev.pt")
    cache_features(net, files[:500], CACHE / "holdout.pt")
    cache_features(net, files[500:], CACHE / "train.pt")


def training_split() -> list[Path]:
    """The photos of `attnviz train` in its order: the first 500 are held out."""
    files = find_images([DATA / "imagenette-train", DATA / "imagenet-sample"])
    random.Random(0).shuffle(files)
    return files


def box_scores(maps: Tensor, photos: list[BoxedPhoto]) -> dict[str, float]:
    """Pointing, energy and MaxBoxAccV2 of 224-px photos' maps, rounded to 0.1."""
    scores = LocalizationScores()
    for m, photo in zip(maps, photos, strict=True):
        scores.add(to_unit_map(m[0].numpy(), 224, 224), photo.boxes)
    return {k: round(v, 1) for k, v in scores.summary().items()}


class PoolGate(nn.Module):
    """M = sigmoid(psi(relu(Wx x + up(Wg g)))), then a 3x3 for spatial context."""

    def __init__(self, local: int, hidden: int, context: int) -> None:
        super().__init__()
        self.wx = nn.Sequential(nn.Conv2d(local, hidden, 1), nn.BatchNorm2d(hidden))
        self.wg = nn.Sequential(nn.Conv2d(1280, hidden, 1), nn.BatchNorm2d(hidden))
        self.psi = nn.Conv2d(hidden, 1, context, padding=context // 2)

    def scores(self, x: Tensor, g: Tensor) -> Tensor:
        up = F.interpolate(self.wg(g), x.shape[-2:], mode="bilinear", align_corners=False)
        return self.psi(F.relu(self.wx(x) + up))

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        return torch.sigmoid(self.scores(x, g))


def propagate(scores: Tensor, fine: Tensor, temperature: float, steps: int) -> Tensor:
    """The shipped gate's spread, A^steps up(s), in chunks small enough for malloc to reuse."""
    chunks = zip(scores.split(8), fine.split(8), strict=True)
    return torch.cat([spread_along(s, f, temperature, steps) for s, f in chunks])


def train(net: EfficientNetLite, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    key = f"b{args.local}"
    data = torch.load(CACHE / "train.pt", weights_only=True)
    gate = PoolGate(LOCAL[args.local], args.hidden, args.context)
    gain = nn.Parameter(torch.ones(()))
    optimizer = torch.optim.Adam([*gate.parameters(), gain], lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    generator = torch.Generator().manual_seed(0)

    def logits_of(m: Tensor, h: Tensor, keep: bool = True) -> Tensor:
        w = args.floor + (1 - args.floor) * (m if keep else 1 - m)
        if args.propagate:  # the map averaged over each head cell weights the head's grid
            return net._fc(gain * (F.adaptive_avg_pool2d(w, h.shape[-2:]) * h).mean((2, 3)))
        up = F.interpolate(h, m.shape[-2:], mode="bilinear", align_corners=False)
        return net._fc(gain * (w * up).mean((2, 3)))

    started = time.time()
    if args.load:  # a gate saved by an earlier run with the same flags: score it only
        saved = torch.load(args.load, weights_only=True)
        gate.load_state_dict(saved["gate"])
        gain.data.copy_(saved["gain"])
    for step in range(0 if args.load else args.steps):
        index = torch.randint(len(data["h"]), (args.batch_size,), generator=generator)
        x, h, teacher = data[key][index].float(), data["h"][index].float(), data["l"][index]
        flipped = bool(torch.rand((), generator=generator) < 0.5)
        if flipped:
            x, h = x.flip(-1), h.flip(-1)
        gate.train()
        if args.propagate:
            fine = data["b4"][index].float()
            if flipped:
                fine = fine.flip(-1)
            coarse = gate.scores(x, h)
            m = torch.sigmoid(propagate(coarse, fine, args.temperature, args.propagate))
        else:
            m = gate(x, h)
        logits = logits_of(m, h)
        kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher, 1), log_target=True,
                      reduction="batchmean")  # fmt: skip
        opening = m.mean() if args.target is None else (m.mean() - args.target) ** 2
        loss = kl + args.area * opening
        if args.hard:  # cross-entropy on the trunk's top-1: agreement is what counts
            loss = loss + args.hard * F.cross_entropy(logits, teacher.argmax(1))
        if args.evidence:  # 1 - correlation with the trunk's class evidence (CAM), upsampled
            cam = torch.einsum("nchw,nc->nhw", h, net._fc.weight[teacher.argmax(1)])[:, None]
            on = coarse if args.propagate else m  # propagated: the coarse scores follow the CAM
            cam = F.interpolate(cam, on.shape[-2:], mode="bilinear", align_corners=False)
            a = on.flatten(1) - on.flatten(1).mean(1, keepdim=True)
            b = cam.flatten(1) - cam.flatten(1).mean(1, keepdim=True)
            corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)
            loss = loss + args.evidence * (1 - corr).mean()
        if args.tv:
            loss = loss + args.tv * (
                (m[..., 1:, :] - m[..., :-1, :]).abs().mean()
                + (m[..., 1:] - m[..., :-1]).abs().mean()
            )
        if args.destroy:
            classes = teacher.argmax(1)[:, None]
            p = F.softmax(logits_of(m, h, keep=False), 1).gather(1, classes)
            loss = loss + args.destroy * p.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0:
            print(f"step {step} kl {kl.item():.3f} open {m.mean().item():.3f} "
                  f"{time.time() - started:.0f}s", flush=True)  # fmt: skip
    gate.eval()

    @torch.inference_mode()
    def maps_and_top1(split: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        maps, top1 = [], []
        for start in range(0, len(split["h"]), 100):
            x, h = split[key][start : start + 100].float(), split["h"][start : start + 100].float()
            if args.propagate:
                fine = split["b4"][start : start + 100].float()
                m = torch.sigmoid(propagate(gate.scores(x, h), fine, args.temperature,
                                            args.propagate))  # fmt: skip
            else:
                m = gate(x, h)
            maps.append(m)
            top1.append(logits_of(m, h).argmax(1))
        return torch.cat(maps), torch.cat(top1)

    holdout = torch.load(CACHE / "holdout.pt", weights_only=True)
    maps, top1 = maps_and_top1(holdout)
    result: dict[str, object] = {
        "args": vars(args),
        "holdout_agreement": 100 * (top1 == holdout["l"].argmax(1)).float().mean().item(),
    }
    if args.train_boxes:  # the held-out training photos that have boxes drawn by us
        where = {path: i for i, path in enumerate(training_split()[:500])}
        boxed = read_boxes(args.train_boxes, DATA / "imagenette-train")
        result["train_boxes_scores"] = box_scores(maps[[where[p.path] for p in boxed]], boxed)
    dev = torch.load(CACHE / "dev.pt", weights_only=True)
    maps, top1 = maps_and_top1(dev)
    photos = read_boxes(DATA / "boxes-dev" / "boxes.csv", DATA / "boxes-dev" / "images")
    labels = torch.tensor([p.label for p in photos])
    result |= {
        "dev_agreement": 100 * (top1 == dev["l"].argmax(1)).float().mean().item(),
        "dev_top1": 100 * (top1 == labels).float().mean().item(),
        "dev_map_range": [float(maps.amin((1, 2, 3)).mean()), float(maps.amax((1, 2, 3)).mean())],
        "dev_scores": box_scores(maps, photos),
    }
    if args.save:
        torch.save({"gate": gate.state_dict(), "gain": gain.detach()}, args.save)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["cache", "train"])
    parser.add_argument("--local", type=int, default=10, choices=sorted(LOCAL))
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--context", type=int, default=3, help="psi's kernel size")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--area", type=float, default=1.0, help="weight of the map's mean")
    parser.add_argument("--target", type=float, default=None, help="area: (mean - target)^2")
    parser.add_argument("--tv", type=float, default=0.0, help="total variation weight")
    parser.add_argument("--destroy", type=float, default=0.0, help="weight of p(class | 1 - M)")
    parser.add_argument("--hard", type=float, default=0.0, help="weight of CE on trunk top-1")
    parser.add_argument("--floor", type=float, default=0.0, help="pool (floor + (1-floor) M) h")
    parser.add_argument("--evidence", type=float, default=0.0, help="weight of 1 - corr(M, CAM)")
    parser.add_argument("--propagate", type=int, default=0,
                        help="steps of affinity propagation on block 4's features")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.1, help="of the affinities")
    parser.add_argument("--train-boxes", type=Path, default=None,
                        help="boxes drawn on held-out training photos")  # fmt: skip
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--load", type=Path, default=None, help="score a saved gate, no training")
    args = parser.parse_args()
    torch.set_num_threads(2)
    net = trunk()
    if args.command == "cache":
        cache(net)
    else:
        print(json.dumps(train(net, args), default=str))


if __name__ == "__main__":
    main()
