"""``attnviz run``: a triptych for every input image, with progress and a summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from attnviz import DEFAULT_MODEL
from attnviz.choices import DEFAULT_MAX_PIXELS
from attnviz.cli.context import effective_config, verbosity_of
from attnviz.cli.flags import Device, Format, Glob, MaxPixels, Model, Quiet
from attnviz.cli.output import console, fail, print_summary, printable
from attnviz.errors import AttnvizError, UsageError


def _parse_query(text: str | None) -> tuple[float, float] | None:
    """``--query X,Y``: two finite, non-negative pixel coordinates."""
    if text is None:
        return None
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--query must be X,Y in pixels, e.g. 120,80; got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y) and x >= 0 and y >= 0):
        raise UsageError(f"--query must be non-negative pixel coordinates, got {text!r}")
    return x, y


def run(
    ctx: typer.Context,
    inputs: Annotated[
        list[Path] | None,
        # readable=False: an unreadable file is one failed input, reported by the run, not
        # a usage error that stops every other input. Not required by click, so that
        # --print-config needs none; checked below.
        typer.Argument(help="Image files and/or folders (recursive).", readable=False),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder; folder inputs are mirrored.")] = Path(
        "attnviz-out"
    ),
    model: Model = DEFAULT_MODEL,
    weights: Annotated[
        Path | None, typer.Option(help="Checkpoint (safetensors or tensors-only torch file).")
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(
            help="Layer name, glob, index (-1 = deepest) or 'all'; comma-separated. Any module "
            "with a one-channel output works too (`attnviz layers`).",
            metavar="LAYER",
        ),
    ] = None,
    cmap: Annotated[
        str, typer.Option(help="OpenCV colormap: jet, turbo, viridis, …", metavar="NAME")
    ] = "jet",
    method: Annotated[
        str,
        typer.Option(help="attention (the layer's weight map) or gradcam (the trunk's Grad-CAM)."),
    ] = "attention",
    alpha: Annotated[float, typer.Option(help="Heatmap opacity over the photo, 0..1.")] = 0.5,
    size: Annotated[int | None, typer.Option(help="Network input size (default: model's).")] = None,
    device: Device = "auto",
    batch_size: Annotated[
        int, typer.Option(help="Photos decoded, rendered and written together.")
    ] = 8,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Threads decoding, rendering and writing beside the model "
            "(default: the cores torch does not use, at least 1)."
        ),
    ] = None,
    fmt: Format = "png",
    save_raw: Annotated[
        bool, typer.Option(help="Also write <stem>.npz with each layer's native map.")
    ] = False,
    glob: Glob = None,
    panel_height: Annotated[
        int,
        typer.Option(
            "--panel-size", "--panel-height", help="Panel height in pixels; captions scale with it."
        ),
    ] = 320,
    panels: Annotated[
        str,
        typer.Option(
            help="Panels in order: original, map, weighted, gradcam, contours, channels "
            "(a channel gate's weights; added after the map by itself when a layer has them)."
        ),
    ] = "original,map,weighted",
    layout: Annotated[
        str, typer.Option(help="row, grid, or separate (one file per panel, for papers).")
    ] = "row",
    norm: Annotated[
        str,
        typer.Option(
            help="Range of the heat maps: image (per image), global (one for the run) or "
            "fixed:LO,HI.",
            metavar="MODE",
        ),
    ] = "image",
    stats: Annotated[
        Path | None, typer.Option(help="Write map statistics (one row per image and layer) as CSV.")
    ] = None,
    gallery: Annotated[
        bool, typer.Option(help="Write index.html, a browsable gallery, into --out.")
    ] = False,
    every: Annotated[int, typer.Option(help="Videos: keep every Nth frame.")] = 1,
    gif: Annotated[bool, typer.Option(help="Videos: also write a short animated GIF.")] = False,
    as_video: Annotated[
        bool, typer.Option(help="Folders given are frame sequences: one video each.")
    ] = False,
    parts: Annotated[
        bool,
        typer.Option(
            help="Also a row per part of each layer: a ViT block's heads, a pyramid's scales, "
            "a deformable block's sampling, …"
        ),
    ] = False,
    query: Annotated[
        str | None,
        typer.Option(
            help="The pixel whose attention a non-local block shows (default: where the block "
            "changes the features most).",
            metavar="X,Y",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Only job K's share of the inputs (K from 0); join the shards with "
            "`attnviz merge`.",
            metavar="K/N",
        ),
    ] = None,
    random_init: Annotated[
        bool, typer.Option(help="Random weights: structure checks only, maps mean nothing.")
    ] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first input that fails.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Redo inputs whose outputs are already up to date.")
    ] = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    quiet: Quiet = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also the device, threads and throughput.")
    ] = False,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="Print the effective options as TOML, each with its source, and exit.",
        ),
    ] = False,
) -> None:
    """Write a triptych (photo | weight map | weighted features) for every input image.

    Defaults: the run table of attnviz.toml or pyproject.toml here; see --print-config.

    Example: attnviz run photos/ --layer all --cmap turbo --out figures/
    """
    try:
        verbosity = verbosity_of(ctx, quiet, verbose)
        if print_config:
            print(effective_config(ctx), end="")
            return
        if not inputs:
            raise UsageError("missing INPUTS: give image files and/or folders to draw")
        query_point = _parse_query(query)
        # Torch-free: what can be checked without the model is checked before torch loads.
        from attnviz.engine.options import RunOptions, check_inputs, check_options

        opts = RunOptions(
            inputs=inputs, out=out, model=model, weights=weights, random_init=random_init,
            layer=layer, cmap=cmap, alpha=alpha, size=size, device=device,
            batch_size=batch_size, workers=workers,
            fmt=fmt.lower(), save_raw=save_raw, glob=glob, panel_height=panel_height,
            strict=strict, overwrite=overwrite, max_pixels=max_pixels, method=method.lower(),
            panels=tuple(p.strip().lower() for p in panels.split(",") if p.strip()),
            layout=layout.lower(), norm=norm.lower(), stats=stats, gallery=gallery, every=every,
            gif=gif, as_video=as_video, shard=shard, parts=parts, query=query_point,
        )  # fmt: skip
        check_options(opts)
        check_inputs(opts.inputs)
        if weights is not None and not weights.is_file():
            raise UsageError(f"{weights}: weights file not found")
        if verbosity > 0:
            _print_setup(model, device, workers)
    except AttnvizError as exc:
        raise fail(exc) from None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from attnviz.engine.pipeline import run as run_pipeline

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} {task.fields[unit]}/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=verbosity < 0,
    )
    # Loading torch and the model takes seconds before the first photo: say so meanwhile.
    task = progress.add_task(f"loading {printable(model)}", total=None, rate="-", unit="images")
    # A video's frames get a bar of their own while it is processed.
    frames = progress.add_task("", total=None, rate="-", unit="frames", visible=False)

    def on_progress(done: int, total: int) -> None:
        elapsed = progress.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
        progress.update(task, description="[bold]attnviz", completed=done, total=total, rate=rate)

    def on_frames(video: str, done: int, total: int | None) -> None:
        if done == 0:
            progress.reset(frames, total=total, visible=True)
            progress.update(frames, description=printable(Path(video).name), rate="-")
            return
        elapsed = progress.tasks[frames].elapsed or 0.0
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
        progress.update(frames, completed=done, rate=rate)

    try:
        with progress:
            summary = run_pipeline(opts, on_progress, on_frames)
    except AttnvizError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        # A second Ctrl-C: outputs are atomic and the manifest was written on the way out.
        console.print("[bold red]interrupted[/]: rerun the same command to resume")
        raise typer.Exit(130) from None
    print_summary(summary, verbosity, gallery=opts.gallery and opts.shard is None)
    if summary.signum is not None:
        raise typer.Exit(128 + summary.signum)
    if summary.failed:
        raise typer.Exit(1)


def _print_setup(model: str, device: str, workers: int | None) -> None:
    """--verbose: what the run is about to use, before the model loads."""
    import torch

    from attnviz.engine.runner import forward_threads, io_workers
    from attnviz.models import resolve_device

    console.print(
        f"model {printable(model)} on {resolve_device(device)}; "
        f"{forward_threads()} torch thread(s), {workers or io_workers()} worker thread(s); "
        f"torch {torch.__version__}",
        highlight=False,
        soft_wrap=True,
    )
