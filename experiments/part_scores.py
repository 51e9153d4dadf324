"""Localisation scores of every map a layer's capture gives, not just the main one.

``attnviz eval`` scores each layer's main map (for a non-local block: the attention row of
the default query; for a deformable layer: the modulated sampling density). This scores,
with the same scorer, the main map, each of its parts (``--parts``) and the weighted map,
so the model card can say which view of a block lands on objects.

    uv run python experiments/part_scores.py ../shared/data/boxes-dev/images \
        ../shared/data/boxes-dev/boxes.csv [MODEL [LAYER]]
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

from attnviz.attention import capture_maps
from attnviz.evaluation.evaluate import read_boxes
from attnviz.evaluation.localization import LocalizationScores, to_unit_map
from attnviz.io import load_rgb
from attnviz.models import load_model


def main(
    images: Path, boxes_csv: Path, model_name: str = "lite0-nonlocal", layer: str | None = None
) -> None:
    photos = read_boxes(boxes_csv, images)
    model = load_model(model_name, device="cpu")
    layer = layer or model.spec.default_layer
    scores: dict[str, LocalizationScores] = defaultdict(LocalizationScores)
    for start in range(0, len(photos), 50):
        batch = photos[start : start + 50]
        pictures = [load_rgb(p.path) for p in batch]
        with torch.inference_mode(), capture_maps(model.net, layer) as captured:
            model(model.preprocess(pictures))
        (c,) = captured.values()
        maps = {
            "main map": c.weights,
            **{f"part: {name}": weights for name, (weights, _) in c.parts.items()},
            "weighted map": c.weighted,
        }
        for i, (photo, picture) in enumerate(zip(batch, pictures, strict=True)):
            h, w = picture.shape[:2]
            for name, m in maps.items():
                scores[name].add(to_unit_map(m[i, 0].float().numpy(), h, w), photo.boxes)
    print("| map | pointing | energy | MaxBoxAccV2 |")
    print("| --- | --- | --- | --- |")
    for name, s in scores.items():
        summary = s.summary()
        print(f"| {name} | {summary['pointing']:.1f} | {summary['energy']:.1f} | "
              f"{summary['maxboxacc_v2']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:])
