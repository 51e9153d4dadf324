"""The sheets `experiments/boxes-train.csv` was drawn on: held-out training photos, enlarged
2x on a grid labelled in the photo's own pixels, so boxes can be read off by eye.

The photos are the first 200 from Imagenette among the 500 that `attnviz train` holds out
(its seed-0 shuffle), so no gate was trained on them. The sheet of photo ID is
OUT/ID.png; OUT/index.csv maps each ID to its file and class.

    uv run python experiments/box_grid.py /tmp/box-sheets
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import cv2
import numpy as np
from pool_gate import DATA, training_split

IMAGENETTE = {
    "n01440764": "tench (fish)", "n02102040": "English springer (dog)",
    "n02979186": "cassette player", "n03000684": "chain saw", "n03028079": "church",
    "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888257": "parachute",
}  # fmt: skip
MARGIN, SCALE, STEP = 30, 2, 16  # sheet border, enlargement, grid spacing in photo pixels


def sheet(photo: np.ndarray) -> np.ndarray:
    size = photo.shape[0] * SCALE
    canvas = np.full((size + 2 * MARGIN, size + 2 * MARGIN, 3), 255, np.uint8)
    canvas[MARGIN : MARGIN + size, MARGIN : MARGIN + size] = cv2.resize(
        photo, (size, size), interpolation=cv2.INTER_CUBIC
    )
    font = cv2.FONT_HERSHEY_SIMPLEX
    for v in range(0, photo.shape[0] + 1, STEP):
        q = MARGIN + SCALE * v
        colour = (0, 255, 255) if v % (4 * STEP) == 0 else (200, 200, 200)
        cv2.line(canvas, (q, MARGIN), (q, MARGIN + size), colour, 1)
        cv2.line(canvas, (MARGIN, q), (MARGIN + size, q), colour, 1)
        for x, y in ((q - 8, MARGIN - 8), (q - 8, size + MARGIN + 22), (2, q + 4),
                     (size + MARGIN + 4, q + 4)):  # fmt: skip
            cv2.putText(canvas, str(v), (x, y), font, 0.33, (0, 0, 0), 1)
    return canvas


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    held_out = [p for p in training_split()[:500] if p.parent.parent.name == "imagenette-train"]
    rows = []
    for i, path in enumerate(held_out[:200]):
        photo = cv2.imread(str(path))
        assert photo.shape[:2] == (224, 224), path
        cv2.imwrite(str(out / f"{i:03d}.png"), sheet(photo))
        rows.append(
            (f"{i:03d}", path.relative_to(DATA / "imagenette-train"), IMAGENETTE[path.parent.name])
        )
    with open(out / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


if __name__ == "__main__":
    main()
