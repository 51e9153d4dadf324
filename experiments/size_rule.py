"""How should lite0-attnpool make its map at an input size other than 224 px? (not a test)

    uv run python experiments/size_rule.py [--sizes 224,160,448] [--weights GATE.safetensors]

Scored on the training split's boxes (`experiments/boxes-train.csv`: 200 photos the gate's
training held out), so a rule can be chosen without looking at `boxes-dev`. Each photo is
preprocessed at the size as `attnviz run` does; the shipped gate's map is then made three
ways, and the gated classifier pools the input's own head features with it:

- ``input``: from the input's own features (the model before the size rule);
- ``pooled spread``: scores from the input's features, the spread along block 4's
  features brought to the 28 x 28 grid they have at 224 px (adaptive average pooling);
- ``224-px view``: from the input resized to 224 px (bicubic, antialiased), what the
  shipped model does (``models.attention_pool.gate_view``).

Prints pointing / energy / MaxBoxAccV2, teacher agreement on these photos, and panel 2's
range (median / 10th percentile).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import attnviz
from attnviz.evaluation.evaluate import read_boxes
from attnviz.evaluation.localization import LocalizationScores, to_unit_map
from attnviz.io import load_rgb
from attnviz.models.attention_pool import Lite0AttentionPool, gate_view

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BOXES = Path(__file__).resolve().parent / "boxes-train.csv"


def make_map(
    net: Lite0AttentionPool, rule: str, x: Tensor, features: tuple[Tensor, Tensor, Tensor]
) -> Tensor:
    """The map of ``rule`` for the input ``x``, whose own features are ``features``."""
    gate, view = net.gate, gate_view(x)
    if rule == "224-px view" and view is not None:
        return gate.attention_map(*net.features(view))
    fine, local, head = features
    if rule == "pooled spread" and view is not None:
        return gate.squash(gate.spread(gate.scores(local, head), F.adaptive_avg_pool2d(fine, 28)))
    return gate.attention_map(fine, local, head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,160,448")
    parser.add_argument("--weights", type=Path, default=None, help="another lite0-attnpool gate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    photos = read_boxes(BOXES, DATA / "imagenette-train")
    images = [load_rgb(p.path) for p in photos]
    print("| size | map made | pointing | energy | MaxBoxAccV2 | agreement | range |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        model = attnviz.load_model("lite0-attnpool", args.weights, device="cpu", size=size)
        net = model.net
        assert isinstance(net, Lite0AttentionPool)
        for rule in ("input", "pooled spread", "224-px view"):
            scores, agree, spans = LocalizationScores(), 0, []
            for start in range(0, len(photos), 25):
                x = model.preprocess(images[start : start + 25])
                with torch.inference_mode():
                    features = net.features(x)
                    maps = make_map(net, rule, x, features)
                    head = features[2]
                    gated = net.logits(net.gate.pool(head, maps)).argmax(1)
                    trunk = net.trunk._fc(head.mean(dim=(2, 3))).argmax(1)
                agree += int((gated == trunk).sum())
                for m, photo in zip(maps, photos[start : start + 25], strict=True):
                    spans.append(float(m.max() - m.min()))
                    width, height = photo.size or load_rgb(photo.path).shape[1::-1]
                    scores.add(to_unit_map(m[0].numpy(), height, width), photo.boxes)
            s = scores.summary()
            print(
                f"| {size} | {rule} | {s['pointing']:.1f} | {s['energy']:.1f} | "
                f"{s['maxboxacc_v2']:.1f} | {100 * agree / len(photos):.1f} | "
                f"{np.median(spans):.2f} / {np.percentile(spans, 10):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
