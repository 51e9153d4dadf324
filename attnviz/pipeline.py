"""The run: inputs -> decode -> batch -> model + hooks -> render -> atomic write + manifest.

The only module that knows the order of the steps; each step lives in its own package.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from attnviz.api import capture_arrays
from attnviz.attention import capture_maps, select_layers
from attnviz.errors import AttnvizError, UsageError
from attnviz.io import (
    FORMATS,
    InputItem,
    ManifestWriter,
    discover,
    load_rgb,
    output_path,
    write_image,
    write_npz,
)
from attnviz.models import LoadedModel, load_model
from attnviz.models.imagenet import imagenet_categories
from attnviz.render import LayerMaps, render_triptych, resolve_colormap


@dataclass
class RunOptions:
    inputs: Sequence[Path]
    out: Path = Path("attnviz-out")
    model: str = "lite0-cbam"
    weights: Path | None = None
    random_init: bool = False
    layer: str | None = None  # None: the model's default layer
    cmap: str = "jet"
    alpha: float = 0.5
    size: int | None = None
    device: str = "auto"
    batch_size: int = 8
    fmt: str = "png"
    save_raw: bool = False
    glob: str | None = None
    panel_height: int = 320


@dataclass
class RunSummary:
    out: Path
    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0


# Called after each input with (inputs done, inputs total).
Progress = Callable[[int, int], None]


def check_options(opts: RunOptions) -> None:
    """Usage errors before any work starts: a bad flag never costs a model load."""
    resolve_colormap(opts.cmap)
    if opts.fmt not in FORMATS:
        raise UsageError(f"unknown format {opts.fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 0.0 <= opts.alpha <= 1.0:
        raise UsageError(f"--alpha must be within [0, 1], got {opts.alpha}")
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if opts.size is not None and opts.size < 32:
        raise UsageError(f"--size must be at least 32, got {opts.size}")


def run(opts: RunOptions, progress: Progress = lambda done, total: None) -> RunSummary:
    start = time.perf_counter()
    check_options(opts)
    summary = RunSummary(out=opts.out)
    items, rejected = discover(list(opts.inputs), opts.glob, exclude=opts.out)
    summary.failed += [(str(r.path), r.reason) for r in rejected]
    model = load_model(
        opts.model, opts.weights, opts.device, size=opts.size, random_init=opts.random_init
    )
    layers = select_layers(model.net, opts.layer or model.spec.default_layer)
    total = len(items)
    with ManifestWriter(opts.out) as manifest:
        for rejected_item in rejected:
            manifest.add({"input": str(rejected_item.path), "error": rejected_item.reason})
        done = 0
        for batch in _decoded_batches(items, opts.batch_size, summary, manifest):
            for record in _process_batch(model, batch, layers, opts):
                manifest.add(record)
                summary.processed += 1
            done = summary.processed + len(summary.failed) - len(rejected)
            progress(done, total)
    summary.wall_s = time.perf_counter() - start
    return summary


def _decoded_batches(
    items: Sequence[InputItem], batch_size: int, summary: RunSummary, manifest: ManifestWriter
) -> Iterator[list[tuple[InputItem, np.ndarray]]]:
    """Batches of decoded photos; an input that fails to decode is recorded and left out."""
    batch: list[tuple[InputItem, np.ndarray]] = []
    for item in items:
        try:
            batch.append((item, load_rgb(item.path)))
        except AttnvizError as exc:
            summary.failed.append((str(item.path), str(exc)))
            manifest.add({"input": str(item.path), "error": str(exc)})
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def logits_of(output: object) -> Tensor:
    """The class scores of a model output that may be a tensor, a tuple or a dict."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        for key in ("logits", "out", "output"):
            if isinstance(output.get(key), Tensor):
                return output[key]
        output = list(output.values())
    if isinstance(output, list | tuple):
        for value in output:
            if isinstance(value, Tensor):
                return value
    raise AttnvizError(f"cannot find class scores in a model output of type {type(output)}")


def top_classes(logits: Tensor, k: int = 5) -> list[list[dict[str, object]]]:
    probs = torch.softmax(logits.float(), dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    names = imagenet_categories() if probs.shape[1] == 1000 else None
    return [
        [
            {"index": int(i), "label": names[int(i)] if names else str(int(i)), "prob": float(p)}
            for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
        ]
        for row_p, row_i in zip(values, indices, strict=True)
    ]


def map_stats(weights: np.ndarray, image_hw: tuple[int, int]) -> dict[str, object]:
    """Simple statistics of a native-resolution map; the peak is given in image pixels."""
    h, w = weights.shape
    y, x = np.unravel_index(int(np.argmax(weights)), weights.shape)
    return {
        "shape": [h, w],
        "min": float(weights.min()),
        "max": float(weights.max()),
        "mean": float(weights.mean()),
        "std": float(weights.std()),
        "peak_xy": [(x + 0.5) * image_hw[1] / w, (y + 0.5) * image_hw[0] / h],
    }


def _process_batch(
    model: LoadedModel,
    batch: list[tuple[InputItem, np.ndarray]],
    layers: list[str],
    opts: RunOptions,
) -> Iterator[dict[str, object]]:
    with torch.inference_mode(), capture_maps(model.net, layers) as captured:
        logits = logits_of(model(model.preprocess([image for _, image in batch])))
        top5 = top_classes(logits)
        maps = {name: capture_arrays(c) for name, c in captured.items()}
    for index, (item, image) in enumerate(batch):
        layer_maps = [
            LayerMaps(name, maps[name][0][index], maps[name][1][index]) for name in layers
        ]
        yield _write_outputs(item, image, layer_maps, top5[index], opts)


def _write_outputs(
    item: InputItem,
    image: np.ndarray,
    layer_maps: list[LayerMaps],
    top5: list[dict[str, object]],
    opts: RunOptions,
) -> dict[str, object]:
    figure_path = output_path(item, opts.out, "." + opts.fmt)
    figure = render_triptych(
        image, layer_maps, cmap=opts.cmap, alpha=opts.alpha, panel_height=opts.panel_height
    )
    write_image(figure_path, figure, opts.fmt)
    outputs = {"figure": figure_path.relative_to(opts.out).as_posix()}
    if opts.save_raw:
        raw_path = figure_path.with_suffix(".npz")
        write_npz(raw_path, {m.name: m.weights.astype(np.float32) for m in layer_maps})
        outputs["raw"] = raw_path.relative_to(opts.out).as_posix()
    return {
        "input": str(item.path),
        "outputs": outputs,
        "model": opts.model,
        "image_size": [int(image.shape[1]), int(image.shape[0])],
        "layers": [m.name for m in layer_maps],
        "top5": top5,
        "maps": {m.name: map_stats(m.weights, image.shape[:2]) for m in layer_maps},
    }
