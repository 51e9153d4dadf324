"""``attnviz compare``: one figure per photo with every model's map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.choices import DEFAULT_MAX_PIXELS
from attnviz.cli.flags import Device, Format, Glob, MaxPixels, Quiet
from attnviz.cli.output import console, counting, fail, print_summary
from attnviz.errors import AttnvizError


def compare(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Image files and/or folders (recursive).", readable=False),
    ],
    models: Annotated[
        str | None,
        typer.Option(
            help="Rows, comma-separated: MODEL[@WEIGHTS][#LAYER] or gradcam (Grad-CAM of the "
            "first model's trunk). MODEL: a built-in name or file.py:factory. "
            "Default: every built-in model with shipped weights, then gradcam.",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Output folder: <stem>.compare.<format> per photo.")
    ] = Path("attnviz-out"),
    layer: Annotated[
        str | None,
        typer.Option(
            help="Layer for entries without #LAYER: name, glob, index (-1 = deepest) or 'all' "
            "(one row per layer). Default: each model's own."
        ),
    ] = None,
    cmap: Annotated[str, typer.Option(help="OpenCV colormap, the same for every row.")] = "jet",
    layout: Annotated[
        str,
        typer.Option(
            help="grid: the photo and every row's weight map as tiles; rows: each row's map "
            "and weighted features, under the photo.",
            metavar="MODE",
        ),
    ] = "grid",
    alpha: Annotated[
        float, typer.Option(help="Heatmap opacity over the photo, 0..1 (rows layout).")
    ] = 0.5,
    norm: Annotated[
        str,
        typer.Option(
            help="Weighted features and Grad-CAM (rows layout): image (each row its own range, "
            "printed) or fixed:LO,HI (one range for every row). Maps are always on [0, 1].",
            metavar="MODE",
        ),
    ] = "image",
    panel_height: Annotated[
        int, typer.Option("--panel-size", "--panel-height", help="Panel height in pixels.")
    ] = 320,
    fmt: Format = "png",
    device: Device = "auto",
    batch_size: Annotated[
        int,
        typer.Option(
            help="Photos decoded and drawn together (on a CPU the model sees one at a time)."
        ),
    ] = 8,
    glob: Glob = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    quiet: Quiet = False,
) -> None:
    """One figure per photo with every model's map: the same photo, colour map and scales.

    By default the photo and each model's weight map (absolute [0, 1] scale) are tiles of
    one grid; --layout rows adds each model's weighted features. Each caption names the
    model, the layer and its top-1 class. Models load once per run. In an entry the layer
    follows the last '#' and the weights the first '@' after the model (after ':factory'
    for file.py:factory).

    Example: attnviz compare photo.jpg --models lite0-cbam,lite0-psa,gradcam
    """
    from attnviz.engine.compare import CompareOptions
    from attnviz.engine.compare import compare as run_compare

    opts = CompareOptions(
        inputs=inputs, out=out, models=models, layer=layer, cmap=cmap, alpha=alpha,
        layout=layout.lower(), norm=norm.lower(), panel_height=panel_height, fmt=fmt.lower(),
        device=device,
        batch_size=batch_size, glob=glob, max_pixels=max_pixels,
    )  # fmt: skip
    try:
        with counting("compare", hidden=quiet) as progress:
            summary = run_compare(opts, progress)
    except AttnvizError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:  # a second Ctrl-C: the figures written are whole
        console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    print_summary(summary, -1 if quiet else 0, command="compare")
    if summary.signum is not None:
        raise typer.Exit(128 + summary.signum)
    if summary.failed:
        raise typer.Exit(1)
