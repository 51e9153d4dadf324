"""A Lite0 model on the photos its training held out, at several input sizes (not a test).

    uv run python experiments/held_out.py [--model lite0-cbam] [--sizes 160,224] [--weights F]

The hold-out is `attnviz train --holdout-per-folder 250`'s (every family): the first 500
photos of the seed-0 shuffle of imagenette-train and imagenet-sample, then imagenet-sample
photos until 250 of its classes are in. Per size and per folder it prints the gated
model's top-1 and the trunk's (labels: Imagenette's folder names, imagenet-sample's index
file), teacher agreement, and panel 2's range (per-photo max - min of the model's default
map): median and 10th percentile; ``--layer all`` adds every layer's range on all photos.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

import attnviz
from attnviz.attention import select_layers
from attnviz.io import load_rgb
from attnviz.training.gates import split_holdout

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDERS = (DATA / "imagenette-train", DATA / "imagenet-sample")


def labels() -> dict[str, int]:
    """Each wnid and file name of the sample's index -> its ImageNet class index."""
    out: dict[str, int] = {}
    with open(DATA / "imagenet-sample-index.csv", newline="") as f:
        for row in csv.DictReader(f):
            out[row["file"]] = out[row["wnid"]] = int(row["imagenet_idx"])
    return out


def label_of(path: Path, known: dict[str, int]) -> int:
    return known[path.name] if path.parent.name == "imagenet-sample" else known[path.parent.name]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=attnviz.DEFAULT_MODEL)
    parser.add_argument("--sizes", default="160,224,288,448")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--layer", default=None, help="as attnviz run's (default: the model's own)")
    args = parser.parse_args()
    held, _ = split_holdout(FOLDERS, 500, 0, per_folder=250)
    known = labels()
    for size in (int(s) for s in args.sizes.split(",")):
        model = attnviz.load_model(args.model, args.weights, device="cpu", size=size)
        rows = []  # (folder, gated top-1 ok, trunk top-1 ok, agree, range)
        layer_spans: dict[str, list[float]] = {}
        for start in range(0, len(held), 25):
            batch = held[start : start + 25]
            x = model.preprocess([load_rgb(p) for p in batch])
            with torch.inference_mode():
                with attnviz.capture(model, args.layer) as maps:
                    gated = model(x).argmax(1)
                with model.net.gates_disabled():
                    trunk = model(x).argmax(1)
            for name, captured in maps.items():
                w = captured.weights[:, 0]
                layer_spans.setdefault(name, []).extend((w.amax((1, 2)) - w.amin((1, 2))).tolist())
            default = select_layers(model.net, model.spec.default_layer)[0]
            shown = maps.get(default) or next(iter(maps.values()))
            weights = shown.weights[:, 0]
            spans = (weights.amax((1, 2)) - weights.amin((1, 2))).tolist()
            for i, path in enumerate(batch):
                label = label_of(path, known)
                rows.append((path.parent.name if path.parent.name == "imagenet-sample"
                             else "imagenette-train", int(gated[i]) == label,
                             int(trunk[i]) == label, int(gated[i]) == int(trunk[i]),
                             spans[i]))  # fmt: skip
        for folder in ("imagenette-train", "imagenet-sample", "all"):
            mine = [r for r in rows if folder in ("all", r[0])]
            spans = np.array([r[4] for r in mine])
            print(
                f"size {size} {folder:16s} {len(mine):4d} photos: top-1 "
                f"{100 * np.mean([r[1] for r in mine]):.1f} (trunk "
                f"{100 * np.mean([r[2] for r in mine]):.1f}), agreement "
                f"{100 * np.mean([r[3] for r in mine]):.1f}, range median "
                f"{np.median(spans):.2f} p10 {np.percentile(spans, 10):.2f}",
                flush=True,
            )
        if len(layer_spans) > 1:
            for name, found in layer_spans.items():
                print(f"size {size} {name}: range median {np.median(found):.2f} "
                      f"p10 {np.percentile(found, 10):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
