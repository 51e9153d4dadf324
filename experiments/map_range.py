"""How much of [0, 1] a model's default map spans on a folder of photos (not a test).

    uv run python experiments/map_range.py [MODEL] [FOLDER]

Prints the mean over photos of each map's minimum and maximum, and the share of photos
whose map spans at least 0.2: the three localisation scores min-max every map, so a
near-constant map can score well, and this says whether the shown map really varies.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import attnviz
from attnviz.io import load_rgb

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else attnviz.DEFAULT_MODEL
    folder = Path(sys.argv[2]) if len(sys.argv) > 2 else DATA / "boxes-dev" / "images"
    model = attnviz.load_model(name, device="cpu")
    files = sorted(folder.glob("*.JPEG"))
    lows, highs = [], []
    for start in range(0, len(files), 50):
        x = model.preprocess([load_rgb(p) for p in files[start : start + 50]])
        with torch.inference_mode(), attnviz.capture(model) as maps:
            model(x)
        weights = next(iter(maps.values())).weights[:, 0]
        lows.append(weights.amin((1, 2)))
        highs.append(weights.amax((1, 2)))
    low, high = torch.cat(lows), torch.cat(highs)
    spans = float(((high - low) >= 0.2).float().mean())
    print(f"{name} on {len(low)} photos: mean min {low.mean():.3f}, mean max {high.mean():.3f}, "
          f"share spanning >= 0.2: {spans:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
