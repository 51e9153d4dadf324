"""Does the attention land on the object? Pointing game and energy on boxed photos.

Maps are scored at the photo's own resolution: upsampled bilinearly and min-max
normalised per photo. ``python -m attnviz.evaluate BOXES_DIR`` prints the scores of
every attention layer of lite0-cbam, a centred Gaussian baseline, and how often the gated
model agrees with its bare trunk.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnviz.attention import capture_maps
from attnviz.io import load_rgb
from attnviz.models import load_model

Box = tuple[float, float, float, float]  # x0, y0, x1, y1, inclusive pixel corners


@dataclass(frozen=True)
class BoxedPhoto:
    path: Path
    label: int
    boxes: tuple[Box, ...]


def read_boxes(folder: Path) -> list[BoxedPhoto]:
    """``boxes.csv`` (file,imagenet_idx,width,height,x0,y0,x1,y1) next to ``images/``."""
    boxes: dict[str, list[Box]] = defaultdict(list)
    labels: dict[str, int] = {}
    with open(folder / "boxes.csv", newline="") as f:
        for row in csv.DictReader(f):
            boxes[row["file"]].append(tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1")))
            labels[row["file"]] = int(row["imagenet_idx"])
    return [
        BoxedPhoto(folder / "images" / name, labels[name], tuple(boxes[name]))
        for name in sorted(boxes)
    ]


def box_mask(boxes: tuple[Box, ...], height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    return mask


def to_image_resolution(native: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling to the photo, then min-max normalisation to [0, 1]."""
    up = F.interpolate(
        native[None, None].float(), (height, width), mode="bilinear", align_corners=False
    )[0, 0]
    up = up - up.min()
    return (up / up.max().clamp_min(1e-12)).numpy()


def pointing_hit(saliency: np.ndarray, mask: np.ndarray) -> bool:
    return bool(mask.flat[int(np.argmax(saliency))])


def energy_share(saliency: np.ndarray, mask: np.ndarray) -> float:
    total = float(saliency.sum())
    return float(saliency[mask].sum()) / total if total > 0 else 0.0


def centred_gaussian(height: int, width: int, sigma: float = 0.25) -> torch.Tensor:
    ys = (torch.arange(height) + 0.5) / height - 0.5
    xs = (torch.arange(width) + 0.5) / width - 0.5
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))


@torch.inference_mode()
def evaluate(
    folder: Path, model_name: str = "lite0-cbam", batch_size: int = 50
) -> dict[str, dict[str, float]]:
    photos = read_boxes(folder)
    model = load_model(model_name, device="cpu")
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    agree = correct = 0
    for start in range(0, len(photos), batch_size):
        batch = photos[start : start + batch_size]
        images = [load_rgb(p.path) for p in batch]
        x = model.preprocess(images)
        with capture_maps(model.net, "all") as maps:
            logits = model(x)
        with model.net.gates_disabled():  # type: ignore[attr-defined]
            trunk = model(x)
        agree += int((logits.argmax(1) == trunk.argmax(1)).sum())
        correct += sum(
            int(p == photo.label) for p, photo in zip(logits.argmax(1).tolist(), batch, strict=True)
        )
        for i, (photo, image) in enumerate(zip(batch, images, strict=True)):
            h, w = image.shape[:2]
            mask = box_mask(photo.boxes, h, w)
            candidates = {name: c.weights[i, 0] for name, c in maps.items()}
            candidates["centred-gaussian"] = centred_gaussian(h, w)
            for name, native in candidates.items():
                saliency = to_image_resolution(native, h, w)
                scores[name]["pointing"].append(100.0 * pointing_hit(saliency, mask))
                scores[name]["energy"].append(100.0 * energy_share(saliency, mask))
    n = len(photos)
    result = {name: {k: float(np.mean(v)) for k, v in s.items()} for name, s in scores.items()}
    result["model"] = {
        "teacher_agreement": 100.0 * agree / n,
        "top1": 100.0 * correct / n,
        "photos": n,
    }
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(evaluate(Path(sys.argv[1]), *sys.argv[2:3]), indent=2))
