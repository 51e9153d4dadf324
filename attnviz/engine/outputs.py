"""What a photo leaves behind: its figure (or separate panels), raw maps, its manifest
record, the per-run statistics CSV and the note for a map too flat to see."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.engine.figures import (
    compose_figure,
    heat_maps,
    map_stats,
    norm_ranges,
    output_suffixes,
    separate_panels,
)
from attnviz.engine.options import RunOptions
from attnviz.io import Decoded, InputItem, output_path, write_image, write_npz
from attnviz.io.files import atomic_write_bytes
from attnviz.render.triptych import Range

if TYPE_CHECKING:
    from attnviz.engine.runner import ImageResult

# Below this, a map's max - min on a photo is too small to see on panel 2's [0, 1] scale.
FLAT_RANGE = 0.05


def flat_map_note(result: ImageResult) -> str | None:
    """A note for the first layer whose map barely varies on a photo, so a flat panel 2 is
    not taken for a rendering bug (videos, whose frames go by in their own loop, get none)."""
    for layer in result.layers:
        span = float(layer.weights.max() - layer.weights.min())
        if span < FLAT_RANGE:
            return (
                f"{layer.name}: the gate barely varies on this photo (max - min {span:.3f} "
                "on panel 2's [0, 1] scale), so its map looks flat; noted once per run"
            )
    return None


def write_outputs(
    item: InputItem,
    decoded: Decoded,
    result: ImageResult,
    opts: RunOptions,
    ranges: Mapping[str, Range] | None = None,
) -> dict[str, object]:
    """Writes one photo's figure (or its separate panels) and, with --save-raw, its raw maps
    under ``opts.out``; returns its manifest record. ``ranges``: the run's colour ranges
    (--norm global)."""
    heat = heat_maps(result)
    ranges = norm_ranges(opts.norm, heat, ranges)
    image, original_hw = decoded.rgb, decoded.original_hw
    suffixes = output_suffixes(opts, [m.name for m in result.layers])
    map_boxes: dict[str, list[int]] | None = None
    if opts.layout == "separate":
        images = separate_panels(image, result, opts, ranges, original_hw)
    else:
        composed = compose_figure(image, result, opts, ranges, original_hw)
        images = {"figure": composed.image}
        # Where each layer's map is, so the gallery can show one layer of a many-row figure.
        map_boxes = {name: list(box) for name, box in composed.map_boxes.items()}
    outputs: dict[str, str] = {}
    for name, figure in images.items():
        path = output_path(item, opts.out, suffixes[name])
        write_image(path, figure, opts.fmt)
        outputs[name] = path.relative_to(opts.out).as_posix()
    if opts.save_raw:
        raw_path = output_path(item, opts.out, suffixes["raw"])
        raw = {m.name: m.weights.astype(np.float32) for m in result.layers}
        if result.gradcam is not None:
            raw["gradcam"] = np.asarray(result.gradcam, dtype=np.float32)
        write_npz(raw_path, raw)
        outputs["raw"] = raw_path.relative_to(opts.out).as_posix()
    return {
        "input": str(item.path),
        "outputs": outputs,
        "model": opts.model,
        "image_size": [original_hw[1], original_hw[0]],
        "layers": [m.name for m in result.layers],
        "top5": result.top5,
        **({"top5_note": result.classes_note} if result.classes_note else {}),
        "maps": {m.name: map_stats(m.weights, original_hw) for m in result.layers},
        # The colour range each heat map was drawn with: its own, or the run's (--norm).
        "heat_ranges": {
            name: list(ranges.get(name) or (float(values.min()), float(values.max())))
            for name, values in heat.items()
        },
        **({"map_boxes": map_boxes} if map_boxes is not None else {}),
    }


STATS_COLUMNS = (
    "input", "layer", "top1", "top1_prob", "min", "max", "mean", "std", "entropy",
    "mass_top10", "peak_x", "peak_y",
)  # fmt: skip


def write_stats_csv(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """``--stats``: one row per image and layer of this run, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STATS_COLUMNS)
    for record in records:
        # A video has no top-5, but the class most of its frames were given.
        top1 = (record.get("top5") or record.get("top1") or [{}])[0]
        for layer, stats in record.get("maps", {}).items():
            x, y = stats.get("peak_xy", [None, None])
            writer.writerow([
                record["input"], layer, top1.get("label"), top1.get("prob"),
                *(stats.get(k) for k in ("min", "max", "mean", "std", "entropy", "mass_top10")),
                x, y,
            ])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8", "surrogateescape"))
