"""The options of a run, and the checks that need no model: torch-free, so that a bad flag
is reported before torch loads (`attnviz --help` and usage errors answer at once).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attnviz import DEFAULT_MODEL
from attnviz.choices import DEFAULT_MAX_PIXELS, FORMATS, PANELS, colormap_name
from attnviz.errors import UsageError
from attnviz.io.shards import Shard

if TYPE_CHECKING:
    from attnviz.render.triptych import Range

METHODS = ("attention", "gradcam")
LAYOUTS = ("row", "grid", "separate")


@dataclass
class RunOptions:
    """What a run was asked for, one field per ``attnviz run`` flag (as the CLI parsed it)."""

    inputs: Sequence[Path]
    out: Path = Path("attnviz-out")
    model: str = DEFAULT_MODEL
    weights: Path | None = None
    random_init: bool = False
    layer: str | None = None  # None: the model's default layer
    method: str = "attention"  # or "gradcam": the gradient baseline, same figure layout
    cmap: str = "jet"
    alpha: float = 0.5
    size: int | None = None
    device: str = "auto"
    batch_size: int = 8
    workers: int | None = None  # threads decoding, rendering and writing; None: io_workers()
    fmt: str = "png"
    save_raw: bool = False
    glob: str | None = None
    panel_height: int = 320
    max_pixels: int = DEFAULT_MAX_PIXELS
    strict: bool = False  # stop at the first failed input
    overwrite: bool = False  # redo inputs whose outputs are up to date
    panels: tuple[str, ...] = ("original", "map", "weighted")
    layout: str = "row"  # row | grid | separate (one file per panel)
    norm: str = "image"  # image | global | fixed:LO,HI: the range of the heat maps
    stats: Path | None = None  # CSV of map statistics, one row per image and layer
    gallery: bool = False  # write index.html into the output folder at the end
    every: int = 1  # videos: keep every Nth frame
    gif: bool = False  # videos: also write a short animated GIF
    as_video: bool = False  # folders of frames are one video each
    shard: str | None = None  # "K/N": only this job's share of the inputs (see io.shards)
    parts: bool = False  # also each layer's parts (a ViT's heads, PSA's scales ...) as rows
    query: tuple[float, float] | None = None  # (x, y) pixel read by point attention (non-local)


def drawn_panels(opts: RunOptions) -> tuple[str, ...]:
    """The panels a figure draws. With ``--method gradcam`` the map and weighted panels are
    one map (Grad-CAM over its maximum, and Grad-CAM on its own range over the photo), so
    the overlay is drawn alone rather than the same map twice."""
    if opts.method == "gradcam" and {"map", "weighted"} <= set(opts.panels):
        return tuple(p for p in opts.panels if p != "map")
    return opts.panels


def check_options(opts: RunOptions) -> None:
    """Usage errors before any work starts: a bad flag never costs a model load."""
    colormap_name(opts.cmap)
    if opts.fmt not in FORMATS:
        raise UsageError(f"unknown format {opts.fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 0.0 <= opts.alpha <= 1.0:
        raise UsageError(f"--alpha must be within [0, 1], got {opts.alpha}")
    if opts.workers is not None and opts.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {opts.workers}")
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if opts.size is not None and opts.size < 32:
        raise UsageError(f"--size must be at least 32, got {opts.size}")
    if opts.method not in METHODS:
        raise UsageError(f"unknown method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if not 16 <= opts.panel_height <= 4096:
        raise UsageError(f"--panel-height must be within 16..4096, got {opts.panel_height}")
    if opts.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, got {opts.max_pixels}")
    bad = [p for p in opts.panels if p not in PANELS]
    if bad or not opts.panels:
        close = [m for p in bad for m in difflib.get_close_matches(p, PANELS, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(
            f"unknown panel {', '.join(map(repr, bad)) or '(none given)'}{hint}; "
            f"choose from {', '.join(PANELS)}"
        )
    if set(opts.panels) == {"channels"}:
        raise UsageError(
            "--panels channels alone: the channel weights are drawn beside a layer's map; "
            "add another panel (e.g. original,map,channels)"
        )
    if len(set(opts.panels)) != len(opts.panels):
        raise UsageError(f"--panels names a panel twice: {','.join(opts.panels)}")
    if opts.layout not in LAYOUTS:
        raise UsageError(f"unknown layout {opts.layout!r}; choose one of {', '.join(LAYOUTS)}")
    parse_norm(opts.norm)
    if opts.every < 1:
        raise UsageError(f"--every must be at least 1, got {opts.every}")
    if opts.shard is not None:
        Shard.parse(opts.shard)
        if parse_norm(opts.norm)[0] == "global":
            raise UsageError(
                "--norm global with --shard: each job would find its own range, so colours "
                "would differ between shards; give every job the same --norm fixed:LO,HI"
            )


def parse_norm(norm: str) -> tuple[str, Range | None]:
    """``--norm``: ("image", None), ("global", None) or ("fixed", (lo, hi))."""
    if norm in ("image", "global"):
        return norm, None
    mode, _, bounds = norm.partition(":")
    try:
        lo, hi = (float(v) for v in bounds.split(","))
    except ValueError:
        lo = hi = math.nan
    if mode != "fixed" or not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise UsageError(f"--norm must be image, global or fixed:LO,HI with LO < HI, got {norm!r}")
    return "fixed", (lo, hi)


def check_inputs(inputs: Sequence[Path]) -> None:
    """When none of the inputs exists, the command line is wrong (a typo): a usage error
    with the closest names beside it, before anything is created. With some inputs present,
    the missing ones are failed inputs of the run instead (one line each)."""
    paths = [Path(p) for p in inputs]
    try:
        # lexists: a broken link exists as a link; the run reports it as a failed input.
        if not paths or any(os.path.lexists(p) for p in paths):
            return
        given = first = paths[0]
        folder = first.parent
        if not folder.is_dir():  # the folder itself is mistyped: match it instead
            first, folder = folder, folder.parent if folder.parent.is_dir() else Path(".")
        names = [entry.name for entry in folder.iterdir() if entry.name != first.name]
    except OSError:
        return  # a name the system refuses (too long …): the run reports it as failed
    close = difflib.get_close_matches(first.name, names, n=3)
    hint = f" (did you mean {', '.join(str(folder / c) for c in close)}?)" if close else ""
    missing = "no such file or folder" if len(paths) == 1 else "none of the inputs exists"
    raise UsageError(f"{missing}: {given}{hint}")
