"""How well can any map at a given grid score on boxes-dev? The boxes themselves, seen
through an n x n grid, scored exactly as `attnviz eval` scores attention maps.

    uv run python experiments/resolution_ceiling.py [--grids 7,14,28]

Each photo's box mask (1 inside any box) is averaged onto the grid (the best a map of that
resolution can know), then brought back like every attention map: bilinear upsampling to
the photo and min-max normalisation. No model is involved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from attnviz.evaluation.evaluate import read_boxes
from attnviz.evaluation.localization import LocalizationScores, box_mask, to_unit_map

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "boxes-dev"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="7,14,28")
    parser.add_argument("--boxes", type=Path, default=DATA / "boxes.csv")
    args = parser.parse_args()
    photos = read_boxes(args.boxes, args.boxes.parent / "images")
    for n in (int(g) for g in args.grids.split(",")):
        scores = LocalizationScores()
        for photo in photos:
            w, h = photo.size or (224, 224)
            mask = box_mask(photo.boxes, h, w).astype(np.float32)
            grid = cv2.resize(mask, (n, n), interpolation=cv2.INTER_AREA)
            scores.add(to_unit_map(grid, h, w), photo.boxes)
        summary = {k: round(v, 1) for k, v in scores.summary().items()}
        print(json.dumps({"grid": f"{n}x{n}", **summary}))


if __name__ == "__main__":
    main()
