"""``attnviz eval``: how well each attention layer's map localises objects, against baselines.

For every photo with boxes, each captured attention map (and, for several layers, their
product), a centred Gaussian and Grad-CAM
on the trunk's last feature map (for the trunk's predicted class) are brought to the
photo's resolution (bilinear, min-max per photo) and scored with attnviz.evaluation.localization:
pointing game, energy-based pointing game and MaxBoxAccV2. Teacher agreement (the gated
model's top-1 equals the bare trunk's) and top-1 accuracy against the labels come too.

The scores min-max every map, so a map that barely varies can score well; each layer's
range (its maximum minus its minimum on each photo, on the [0, 1] scale panel 2 draws)
says whether the map a user sees really varies: its median and 10th percentile.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnviz import DEFAULT_MODEL
from attnviz.attention import select_layers
from attnviz.engine.gradcam import has_trunk
from attnviz.engine.runner import (
    BatchRunner,
    forward_batch,
    forward_threads,
    io_workers,
    torch_threads,
)
from attnviz.errors import AttnvizError
from attnviz.evaluation.localization import Box, LocalizationScores, to_unit_map
from attnviz.io import load_rgb
from attnviz.io.files import atomic_write_bytes
from attnviz.models import LoadedModel, load_model

COMBINED = "combined: product of layers"
GAUSSIAN = "baseline: centred Gaussian"
GRADCAM = "baseline: Grad-CAM"


@dataclass(frozen=True)
class BoxedPhoto:
    """One photo of the boxes CSV: its file, its ImageNet class index and its objects' boxes
    (x0, y0, x1, y1) in pixels of the upright photo."""

    path: Path
    label: int
    boxes: tuple[Box, ...]
    size: tuple[int, int] | None = None  # (width, height) the boxes are given for
    name: str = ""  # as the CSV writes it, so per-photo rows join back to the boxes


def read_boxes(csv_path: Path, images: Path) -> list[BoxedPhoto]:
    """Rows ``file,imagenet_idx,width,height,x0,y0,x1,y1`` (one per box) -> photos."""
    boxes: dict[str, list[Box]] = defaultdict(list)
    labels: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    box = tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))
                    labels[row["file"]] = int(row["imagenet_idx"])
                    if row.get("width") and row.get("height"):
                        sizes[row["file"]] = (int(float(row["width"])), int(float(row["height"])))
                except (KeyError, TypeError, ValueError):
                    raise AttnvizError(
                        f"{csv_path}:{line}: expected file,imagenet_idx,width,height,x0,y0,x1,y1"
                    ) from None
                boxes[row["file"]].append(box)  # type: ignore[arg-type]
    except OSError as exc:
        raise AttnvizError(f"{csv_path}: cannot read boxes ({exc.strerror or exc})") from exc
    if not boxes:
        raise AttnvizError(f"{csv_path}: no boxes")
    return [
        BoxedPhoto(images / name, labels[name], tuple(boxes[name]), sizes.get(name), name)
        for name in sorted(boxes)
    ]


def centred_gaussian(height: int, width: int, sigma: float = 0.25) -> np.ndarray:
    """exp(-r^2 / 2 sigma^2), r measured in fractions of each side from (width/2, height/2).

    Sampled at pixel indices (corner convention), so a 224-px side peaks on pixel 112 alone.
    """
    ys = (np.arange(height) - height / 2) / height
    xs = (np.arange(width) - width / 2) / width
    return np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))


PER_PHOTO_COLUMNS = ("file", "map", "pointing", "energy", "box_iou", "min", "max", "range")


@dataclass
class EvalResult:
    """What an evaluation found: each map's localisation scores, and the model's top-1 accuracy in
    percent, with its gates and without them (its trunk), and how often the two agree (those two
    None for a model without gates)."""

    photos: int
    # map name -> pointing, energy, maxboxacc_v2, ...; a layer's also range_median, range_p10
    scores: dict[str, dict[str, float]]
    top1: float
    trunk_top1: float | None  # None when the model has no gates to switch off
    teacher_agreement: float | None
    per_photo: list[dict[str, object]] = field(default_factory=list)  # PER_PHOTO_COLUMNS
    missing: list[Path] = field(default_factory=list)  # photos the CSV names that are absent

    def as_dict(self) -> dict[str, object]:
        return {
            "photos": self.photos,
            "missing": [str(p) for p in self.missing],
            "maps": self.scores,
            "model": {
                "top1": self.top1,
                "trunk_top1": self.trunk_top1,
                "teacher_agreement": self.teacher_agreement,
            },
        }


def evaluate(
    images: Path,
    boxes_csv: Path,
    model: str | LoadedModel = DEFAULT_MODEL,
    layers: str | Sequence[str] = "all",
    batch_size: int = 50,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    *,
    weights: Path | None = None,
    device: str = "cpu",
    size: int | None = None,
) -> EvalResult:
    """Every map's localisation on boxed photos, with the baselines; ``model`` in any form
    ``run`` takes, with ``weights`` (a checkpoint or trained gates), on ``device``, at input
    ``size`` (None: the model's own). Photos the CSV names but ``images`` lacks are skipped
    and listed in ``missing``. ``batch_size`` photos are decoded at a time, the next batch
    while the model runs; the forward passes are ``run``'s (BatchRunner on run's threads), so
    a photo decoded at full size has the maps ``run --save-raw`` saves, to the byte."""
    named = read_boxes(boxes_csv, images)
    photos = [p for p in named if p.path.is_file()]
    missing = [p.path for p in named if not p.path.is_file()]
    if not photos:
        raise AttnvizError(f"none of the {len(named)} photos named in {boxes_csv} is in {images}")
    if isinstance(model, LoadedModel):
        if size is not None and size != model.size:
            raise ValueError("size applies to a model given by name; this one is loaded")
        loaded = model
    else:
        loaded = load_model(model, weights, device=device, size=size)
    names = select_layers(loaded.net, layers)
    runner = BatchRunner(
        loaded, names, with_gradcam=True, forward_batch=forward_batch(loaded.device)
    )
    scores: dict[str, LocalizationScores] = defaultdict(LocalizationScores)
    ranges: dict[str, list[tuple[float, float]]] = defaultdict(list)  # per layer, (min, max)
    correct = trunk_correct = agree = 0
    for done, batch, pictures in _decoded(photos, batch_size):
        for photo, picture in zip(batch, pictures, strict=True):
            h, w = picture.shape[:2]
            if photo.size is not None and photo.size != (w, h):
                raise AttnvizError(
                    f"{photo.path}: is {w}x{h} (upright), but {boxes_csv} gives its boxes "
                    f"for {photo.size[0]}x{photo.size[1]}"
                )
        for photo, picture, result in zip(batch, pictures, runner.run(pictures), strict=True):
            if not result.top5:
                raise AttnvizError(f"eval scores classifiers' maps: {result.classes_note}")
            predicted, trunk_predicted = result.top5[0]["index"], result.trunk_class
            correct += predicted == photo.label
            trunk_correct += trunk_predicted == photo.label
            agree += predicted == trunk_predicted
            h, w = picture.shape[:2]
            maps = {name: row.weights for name, row in zip(names, result.layers, strict=True)}
            for name, weight_map in maps.items():
                ranges[name].append((float(weight_map.min()), float(weight_map.max())))
            units = {name: to_unit_map(weight_map, h, w) for name, weight_map in maps.items()}
            if len(names) > 1:
                # Where every layer agrees: each gate's map, at the photo's size, multiplied.
                units[COMBINED] = to_unit_map(np.prod(list(units.values()), axis=0), h, w)
            units[GAUSSIAN] = to_unit_map(centred_gaussian(h, w), h, w)
            assert result.gradcam is not None  # the runner was asked for it
            units[GRADCAM] = to_unit_map(result.gradcam, h, w)
            for name, unit in units.items():
                scores[name].add(unit, photo.boxes)
        progress(done, len(photos))
    n = len(photos)
    gated = has_trunk(loaded.net)
    summaries = {name: s.summary() for name, s in scores.items()}
    for name, lows_highs in ranges.items():
        spans = np.array([high - low for low, high in lows_highs])
        summaries[name] |= {"range_median": float(np.median(spans)),
                            "range_p10": float(np.percentile(spans, 10))}  # fmt: skip
    per_photo = []
    for name, s in scores.items():
        for photo, hit, energy, iou, low_high in zip(
            photos,
            s.hits,
            s.energies,
            s.photo_ious(),
            ranges.get(name, [(None, None)] * n),
            strict=True,
        ):
            low, high = low_high
            per_photo.append({
                "file": photo.name, "map": name,
                "pointing": int(hit), "energy": 100.0 * energy, "box_iou": iou,
                "min": low, "max": high,
                "range": None if low is None or high is None else high - low,
            })  # fmt: skip
    return EvalResult(
        photos=n,
        scores=summaries,
        top1=100.0 * correct / n,
        trunk_top1=100.0 * trunk_correct / n if gated else None,
        teacher_agreement=100.0 * agree / n if gated else None,
        per_photo=per_photo,
        missing=missing,
    )


def _decoded(
    photos: list[BoxedPhoto], batch_size: int
) -> Iterator[tuple[int, list[BoxedPhoto], list[np.ndarray]]]:
    """(photos done after this batch, the batch, its pictures) on run's threads: the model's
    on this one, the next batch decoding on the others meanwhile."""
    batches = [photos[i : i + batch_size] for i in range(0, len(photos), batch_size)]

    with torch_threads(forward_threads()), ThreadPoolExecutor(io_workers()) as pool:

        def decode(batch: list[BoxedPhoto]) -> list[Future[np.ndarray]]:
            return [pool.submit(load_rgb, p.path) for p in batch]  # a photo per worker

        pending = decode(batches[0])
        done = 0
        for k, batch in enumerate(batches):
            pictures = [future.result() for future in pending]
            if k + 1 < len(batches):
                pending = decode(batches[k + 1])
            done += len(batch)
            yield done, batch, pictures


def write_per_photo_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    """``--per-photo``: one row per photo and map, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, PER_PHOTO_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def _cell(value: object) -> object:
    if value is None:
        return ""  # a baseline has no absolute scale
    return f"{value:.4f}" if isinstance(value, float) else value
