"""The attnviz command line. Thin: flags -> options -> library calls.

Nothing here imports torch at module level, so ``attnviz --help`` answers at once;
each command imports what it needs when it runs.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attnviz import DEFAULT_MODEL, __version__
from attnviz.choices import DEFAULT_MAX_PIXELS
from attnviz.cli.help import HelpCommand, HelpGroup, colour_off, option_kind
from attnviz.errors import AttnvizError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from attnviz.cli.config import Schema
    from attnviz.cli.doctor import Check
    from attnviz.engine.plan import RunSummary

app = typer.Typer(
    cls=HelpGroup,
    help="See where a vision network's spatial attention lands.\n\n"
    "Example: attnviz run photo.jpg --out figures/",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

MODEL_HELP = (
    "A built-in model (`attnviz models`), file.py:factory or package.module:factory (your "
    "code), or timm:NAME."
)


if colour_off():
    # Usage-error screens use typer's own console, configured by this global.
    import typer.rich_utils

    typer.rich_utils.COLOR_SYSTEM = None

_COLOUR: Literal["auto"] | None = None if colour_off() else "auto"
console = Console(stderr=True, color_system=_COLOUR)
out_console = Console(color_system=_COLOUR)
# Where the config files' defaults are kept for the commands (see _load_config).
CONFIG_META = "attnviz.cli.config"


def _printable(text: object) -> str:
    """Text safe for any terminal: a non-UTF-8 file name shows its bytes as \\x escapes."""
    # Control characters (a newline, an escape sequence) in a file name must not forge
    # extra output lines or recolour the terminal.
    raw = "".join(
        c if not unicodedata.category(c).startswith("C") or _is_surrogate(c) else repr(c)[1:-1]
        for c in str(text)
    )
    try:
        data = raw.encode("utf-8", "surrogateescape")  # back to the name's original bytes
    except UnicodeEncodeError:
        data = raw.encode("utf-8", "backslashreplace")
    # escape(): a file name like "photo[1].jpg" must not be read as rich markup.
    return escape(data.decode("utf-8", "backslashreplace"))


def _is_surrogate(c: str) -> bool:
    return "\ud800" <= c <= "\udfff"  # a non-UTF-8 byte of a file name, shown below


def _fail(exc: AttnvizError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {_printable(exc)}", highlight=False, soft_wrap=True)
    return typer.Exit(2 if isinstance(exc, UsageError) else 1)


def _print_version(value: bool) -> None:
    if value:
        print(f"attnviz {__version__}")
        raise typer.Exit()


@app.callback()
def _app_options(
    ctx: typer.Context,
    version: Annotated[  # noqa: ARG001 - typer names the option after it; its callback acts
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # Runs before the command's options are parsed: the defaults it sets are the ones the
    # command's flags override, and the ones its --help shows.
    _load_config(ctx)


def _load_config(ctx: typer.Context) -> None:
    """Defaults from attnviz.toml / pyproject.toml in the working directory, via default_map."""
    from attnviz.cli.config import load_defaults

    try:
        defaults = load_defaults(Path.cwd(), _option_schema(ctx.command))
    except UsageError as exc:
        if ctx.invoked_subcommand == "doctor":  # a broken config file is one of its rows
            ctx.meta[CONFIG_META] = exc
            return
        raise _fail(exc) from None
    ctx.meta[CONFIG_META] = defaults
    ctx.default_map = {**defaults.values, **(ctx.default_map or {})}


# Options that make no sense as a project default.
_NOT_CONFIGURABLE = frozenset({"help", "print_config", "install_completion", "show_completion"})


def _option_schema(group: object) -> Schema:
    """Each command's options as attnviz.cli.config describes them, read off the click commands."""
    from attnviz.cli.config import OptionSpec

    commands = getattr(group, "commands", {})
    return {
        name: [
            OptionSpec(
                param.name,
                tuple(o.lstrip("-") for o in param.opts if o.startswith("--")),
                option_kind(param),
            )
            for param in command.params
            if param.param_type_name == "option"
            and param.name
            and param.name not in _NOT_CONFIGURABLE
        ]
        for name, command in commands.items()
    }


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


@app.command(cls=HelpCommand)
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
    model: Annotated[str, typer.Option(help=MODEL_HELP, metavar="MODEL")] = DEFAULT_MODEL,
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
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
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
    fmt: Annotated[str, typer.Option("--format", help="png, jpg or webp.")] = "png",
    save_raw: Annotated[
        bool, typer.Option(help="Also write <stem>.npz with each layer's native map.")
    ] = False,
    glob: Annotated[str | None, typer.Option(help="Only files matching this glob.")] = None,
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
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images with more pixels than this (decompression bombs).")
    ] = DEFAULT_MAX_PIXELS,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors and failed inputs, one line each.")
    ] = False,
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
        verbosity = _verbosity(ctx, quiet, verbose)
        if print_config:
            print(_effective_config(ctx), end="")
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
        raise _fail(exc) from None
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
    task = progress.add_task(f"loading {_printable(model)}", total=None, rate="-", unit="images")
    # A video's frames get a bar of their own while it is processed.
    frames = progress.add_task("", total=None, rate="-", unit="frames", visible=False)

    def on_progress(done: int, total: int) -> None:
        elapsed = progress.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
        progress.update(task, description="[bold]attnviz", completed=done, total=total, rate=rate)

    def on_frames(video: str, done: int, total: int | None) -> None:
        if done == 0:
            progress.reset(frames, total=total, visible=True)
            progress.update(frames, description=_printable(Path(video).name), rate="-")
            return
        elapsed = progress.tasks[frames].elapsed or 0.0
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
        progress.update(frames, completed=done, rate=rate)

    try:
        with progress:
            summary = run_pipeline(opts, on_progress, on_frames)
    except AttnvizError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        # A second Ctrl-C: outputs are atomic and the manifest was written on the way out.
        console.print("[bold red]interrupted[/]: rerun the same command to resume")
        raise typer.Exit(130) from None
    _print_summary(summary, verbosity, gallery=opts.gallery and opts.shard is None)
    if summary.signum is not None:
        raise typer.Exit(128 + summary.signum)
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(
    summary: RunSummary, verbosity: int = 0, command: str = "run", gallery: bool = False
) -> None:
    """The summary table and one line per note or failure; --quiet keeps only the failures.
    With ``gallery``, where index.html was written, so it can be opened at once."""
    if verbosity >= 0:
        table = Table(title=f"attnviz {command}", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        table.add_row("processed", str(summary.processed))
        if command == "run":  # only run keeps up-to-date outputs
            table.add_row("up to date", str(summary.skipped))
        table.add_row("failed", str(len(summary.failed)))
        table.add_row("output", _printable(summary.out))
        if gallery and (summary.out / "index.html").is_file():
            table.add_row("gallery", _printable(summary.out / "index.html"))
        table.add_row("wall time", f"{summary.wall_s:.1f} s")
        if verbosity > 0 and summary.wall_s > 0:
            table.add_row("throughput", f"{summary.processed / summary.wall_s:.2f} images/s")
        out_console.print(table)
    for label, style, entries in (
        ("note", "yellow", summary.notes if verbosity >= 0 else []),
        ("failed", "red", summary.failed),
    ):
        for path, reason in entries:
            # One line per input; a reason from decoding or writing already names the file.
            line = reason if reason.startswith(path) else f"{path}: {reason}"
            console.print(
                f"[{style}]{label}:[/] {_printable(line)}", highlight=False, soft_wrap=True
            )
    if summary.stopped_by == "--strict":
        console.print("[bold red]stopped[/] at the first failure (--strict)")
    elif summary.stopped_by:
        console.print(
            f"[bold red]stopped[/] by {summary.stopped_by}: finished outputs and the manifest are "
            "written; rerun the same command to resume"
        )


def _verbosity(ctx: typer.Context, quiet: bool, verbose: bool) -> int:
    """-1 quiet, 0 normal, 1 verbose. A flag overrides the other one set in a config file."""
    if not (quiet and verbose):
        return -1 if quiet else int(verbose)
    quiet_flag, verbose_flag = (_source(ctx, name) == "flag" for name in ("quiet", "verbose"))
    if quiet_flag != verbose_flag:
        return -1 if quiet_flag else 1
    files = sorted({_source(ctx, "quiet"), _source(ctx, "verbose")})
    where = "given together" if quiet_flag else f"both set in {' and '.join(files)}"
    raise UsageError(f"--quiet and --verbose are mutually exclusive ({where})")


def _source(ctx: typer.Context, name: str) -> str:
    """Where an option's value came from: flag, environment, attnviz.toml, ... or default."""
    source = ctx.get_parameter_source(name)
    kind = source.name if source is not None else "DEFAULT"
    if kind == "DEFAULT_MAP":
        from attnviz.cli.config import Defaults

        defaults = ctx.meta.get(CONFIG_META)
        found = (
            defaults.source(ctx.info_name or "", name) if isinstance(defaults, Defaults) else None
        )
        return found or "config"
    return {"COMMANDLINE": "flag", "ENVIRONMENT": "environment"}.get(kind, "default")


def _effective_config(ctx: typer.Context) -> str:
    """The command's options as a TOML table to paste into attnviz.toml, sources as comments."""
    from attnviz.cli.config import format_toml

    rows = [
        (param.opts[0].lstrip("-"), _plain(ctx.params[param.name]), _source(ctx, param.name))
        for param in ctx.command.params
        if param.param_type_name == "option" and param.name and param.name not in _NOT_CONFIGURABLE
    ]
    return format_toml(ctx.info_name or "run", rows)


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def _print_setup(model: str, device: str, workers: int | None) -> None:
    """--verbose: what the run is about to use, before the model loads."""
    import torch

    from attnviz.engine.runner import forward_threads, io_workers
    from attnviz.models import resolve_device

    console.print(
        f"model {_printable(model)} on {resolve_device(device)}; "
        f"{forward_threads()} torch thread(s), {workers or io_workers()} worker thread(s); "
        f"torch {torch.__version__}",
        highlight=False,
        soft_wrap=True,
    )


@app.command(cls=HelpCommand)
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
    fmt: Annotated[str, typer.Option("--format", help="png, jpg or webp.")] = "png",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[
        int,
        typer.Option(
            help="Photos decoded and drawn together (on a CPU the model sees one at a time)."
        ),
    ] = 8,
    glob: Annotated[str | None, typer.Option(help="Only files matching this glob.")] = None,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images with more pixels than this (decompression bombs).")
    ] = DEFAULT_MAX_PIXELS,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors and failed inputs, one line each.")
    ] = False,
) -> None:
    """One figure per photo with every model's map: the same photo, colour map and scales.

    By default the photo and each model's weight map (absolute [0, 1] scale) are tiles of
    one grid; --layout rows adds each model's weighted features. Each caption names the
    model, the layer and its top-1 class. Models load once per run. In an entry the layer
    follows the last '#' and the weights the first '@' after the model (after ':factory'
    for file.py:factory).

    Example: attnviz compare photo.jpg --models lite0-cbam,lite0-psa,gradcam
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from attnviz.engine.compare import CompareOptions
    from attnviz.engine.compare import compare as run_compare

    opts = CompareOptions(
        inputs=inputs, out=out, models=models, layer=layer, cmap=cmap, alpha=alpha,
        layout=layout.lower(), norm=norm.lower(), panel_height=panel_height, fmt=fmt.lower(),
        device=device,
        batch_size=batch_size, glob=glob, max_pixels=max_pixels,
    )  # fmt: skip
    progress = Progress(
        "compare", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        transient=True, disable=quiet,
    )  # fmt: skip
    task = progress.add_task("compare", total=None)
    try:
        with progress:
            summary = run_compare(
                opts, lambda done, total: progress.update(task, completed=done, total=total)
            )
    except AttnvizError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:  # a second Ctrl-C: the figures written are whole
        console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    _print_summary(summary, -1 if quiet else 0, command="compare")
    if summary.signum is not None:
        raise typer.Exit(128 + summary.signum)
    if summary.failed:
        raise typer.Exit(1)


@app.command(cls=HelpCommand)
def layers(
    model: Annotated[str, typer.Option(help=MODEL_HELP, metavar="MODEL")] = DEFAULT_MODEL,
    weights: Annotated[
        Path | None,
        typer.Option(help="Load these weights too, to check that they fit (as in run)."),
    ] = None,
    size: Annotated[int | None, typer.Option(help="Input size (default: model's).")] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Also list these modules (as in run's --layer): user selections."),
    ] = None,
) -> None:
    """List a model's attention layers: name, family, shapes, and how each was found.

    Found by the attention protocol, an adapter, what a module computes, or --layer.

    Example: attnviz layers --model cbam-resnet50
    """
    from attnviz.engine.describe import describe_layers

    try:
        rows, default = describe_layers(model, size, layer, weights)
    except AttnvizError as exc:
        raise _fail(exc) from None
    table = Table(title=f"attention layers of {model}", title_justify="left")
    for column in ("#", "name", "family", "feature shape", "map shape", "found by"):
        table.add_column(column)
    # Indices count attention layers only: --layer -1 never means a user-selected module.
    indexed = [r for r in rows if r.found_by != "user selection"]
    lines = []
    for row in rows:
        mark = " (default)" if row.name == default else ""
        index = str(indexed.index(row) - len(indexed)) if row in indexed else ""
        cells = (row.family, _shape(row.feature), _shape(row.map), row.found_by)
        table.add_row(index, row.name + mark, *cells)
        lines.append(f"{index:>4}  {row.name}{mark}  [dim]({', '.join(cells)})[/]")
    unbounded = out_console.options.update(max_width=10_000)
    if out_console.measure(table, options=unbounded).maximum <= out_console.width:
        out_console.print(table)
    else:  # names are copied into --layer: one line each rather than a cut table cell
        out_console.print(f"attention layers of {model} (family, feature, map, found by):")
        for line in lines:
            out_console.print(line, soft_wrap=True, highlight=False)
    # What a discovered pattern's map shows, once per pattern.
    for pattern, map_is in dict.fromkeys((r.family, r.map_is) for r in rows if r.map_is):
        out_console.print(f"{pattern}: the map is {map_is}", soft_wrap=True)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


@app.command(cls=HelpCommand)
def models(
    name: Annotated[str | None, typer.Argument(help="A model to describe in full.")] = None,
) -> None:
    """List the built-in models, one a line (* marks the default); NAME describes one.

    Example: attnviz models lite0-cbam
    """
    from attnviz.models.registry import MODELS, get_spec

    if name is not None:
        try:
            spec = get_spec(name)
        except AttnvizError as exc:
            raise _fail(exc) from None
        default = " (the default)" if spec.name == DEFAULT_MODEL else ""
        out_console.print(f"[bold]{spec.name}[/]{default}", highlight=False)
        for label, value in (
            ("family", spec.family), ("input size", str(spec.input_size)),
            ("weights", spec.weights.value),
            ("default layer", "the last" if spec.default_layer == "-1" else spec.default_layer),
        ):  # fmt: skip
            out_console.print(f"  {label + ':':15}{value}", highlight=False, soft_wrap=True)
        out_console.print(spec.description, highlight=False, markup=False)
        return
    # One line a model, nothing cut: names are typed into --model; `attnviz models NAME`
    # gives the description.
    name_width = max(len(n) for n in MODELS) + 2
    source_width = max(len(s.weights.value) for s in MODELS.values()) + 2
    header = f"  {'name':{name_width}}{'weights':{source_width}}attention"
    out_console.print(header, style="bold", highlight=False, markup=False)
    for spec in MODELS.values():
        marker = "*" if spec.name == DEFAULT_MODEL else " "
        out_console.print(
            f"{marker} {spec.name:{name_width}}{spec.weights.value:{source_width}}{spec.family}",
            highlight=False, soft_wrap=True, markup=False,
        )  # fmt: skip
    out_console.print("* the default; attnviz models NAME describes one", highlight=False)


@app.command(name="eval", cls=HelpCommand)
def eval_command(
    images: Annotated[Path, typer.Argument(help="Folder of the photos named in the CSV.")],
    boxes: Annotated[
        Path, typer.Option(help="CSV: file,imagenet_idx,width,height,x0,y0,x1,y1 per box.")
    ],
    model: Annotated[str, typer.Option(help=MODEL_HELP, metavar="MODEL")] = DEFAULT_MODEL,
    weights: Annotated[
        Path | None,
        typer.Option(help="Checkpoint, or gates written by `attnviz train` (as in run)."),
    ] = None,
    layer: Annotated[str, typer.Option(help="Attention layers to score (as in run).")] = "all",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Photos per forward pass.")] = 50,
    size: Annotated[
        int | None, typer.Option(help="Input size in pixels (default: the model's).", min=32)
    ] = None,
    per_photo: Annotated[
        Path | None,
        typer.Option(help="Also write each photo's scores and map range to this CSV file."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """Score how well each attention map lands on boxed objects, beside baselines.

    The scores are pointing, energy and MaxBoxAccV2; the range columns say how much each
    layer's map varies on panel 2's absolute [0, 1] scale.

    Example: attnviz eval photos/ --boxes boxes.csv --per-photo scores.csv
    """
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from attnviz.evaluation.evaluate import evaluate, write_per_photo_csv

    if per_photo is not None and not per_photo.parent.is_dir():
        raise _fail(UsageError(f"--per-photo: folder {per_photo.parent} does not exist"))
    progress = Progress(
        "eval", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        transient=True, disable=as_json,
    )  # fmt: skip
    task = progress.add_task("eval", total=None)
    try:
        with progress:
            result = evaluate(
                images, boxes, model, layer, max(1, batch_size),
                lambda done, total: progress.update(task, completed=done, total=total),
                weights=weights, device=device, size=size,
            )  # fmt: skip
        if per_photo is not None:
            write_per_photo_csv(per_photo, result.per_photo)
    except AttnvizError as exc:
        raise _fail(exc) from None
    if result.missing:
        console.print(
            f"[yellow]note:[/] {len(result.missing)} photo(s) named in {_printable(str(boxes))} "
            f"are not in {_printable(str(images))} and were skipped, e.g. "
            f"{_printable(result.missing[0].name)}",
            highlight=False,
        )
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(
        title=f"{_printable(model)} on {result.photos} photos (%)", title_justify="left",
        caption="range: a map's max - min on each photo, on panel 2's [0, 1] scale; "
        "--json adds the box accuracy at each IoU level", caption_justify="left",
        box=box.SIMPLE_HEAD,  # no column rules: fits 80 columns
    )  # fmt: skip
    columns = ("pointing", "energy", "maxboxacc_v2")
    table.add_column("map", no_wrap=True)
    # Two-line headers keep the table inside 80 columns.
    for column in ("pointing", "energy", "MaxBox\nAccV2", "range\nmedian", "range\np10"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, scores in result.scores.items():
        spans = [f"{scores[c]:.2f}" if c in scores else "-" for c in ("range_median", "range_p10")]
        table.add_row(_printable(name), *(f"{scores[c]:.1f}" for c in columns), *spans)
    out_console.print(table)

    def pct(value: float | None) -> str:
        return "n/a (no gates to switch off)" if value is None else f"{value:.1f} %"

    out_console.print(
        f"top-1 {result.top1:.1f} % (trunk {pct(result.trunk_top1)}); "
        f"teacher agreement {pct(result.teacher_agreement)}"
    )


@app.command(cls=HelpCommand)
def train(
    data: Annotated[list[Path], typer.Argument(help="Folders of training photos (no labels).")],
    family: Annotated[
        str,
        typer.Option(
            help="Gate family: cbam, psa, multiscale, lightweight, dynamic or bam (lite0-FAMILY's "
            "four gates), attnpool (lite0-attnpool's attention-gated pooling), nonlocal or "
            "deform (lite0-FAMILY's block after block 10)."
        ),
    ] = "cbam",
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the gate weights (default: pretrained/lite0-FAMILY)."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 600,
    batch_size: Annotated[
        int | None, typer.Option(help="Photos per step (default: 32; attnpool 64).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate (default: 0.02; attnpool 0.003; nonlocal, deform 0.001)."),
    ] = None,
    floors: Annotated[
        str | None,
        typer.Option(
            help="What each gate keeps where its map is 0 (block4,10,15,head) "
            "(default: 0.95,0.95,0.95,0.7); not attnpool."
        ),
    ] = None,
    area: Annotated[
        float | None,
        typer.Option(help="attnpool only: weight of the map's mean (default: 0.6)."),
    ] = None,
    evidence: Annotated[
        float | None,
        typer.Option(help="Weight of the agreement with the trunk's class evidence (default: 1)."),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="File to keep the frozen trunk's features for reruns.")
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="nonlocal and deform only: start from this block's weights."),
    ] = None,
    holdout: Annotated[int, typer.Option(help="Photos kept aside to measure agreement.")] = 500,
    holdout_per_folder: Annotated[
        int, typer.Option(help="Keep aside at least this many from each data folder too.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train lite0-FAMILY's attention by distilling the frozen trunk (no labels needed).

    Interrupted runs resume: the same command continues from the last saved step.
    --cache keeps the trunk's features for reruns (the gate families, nonlocal and
    deform share one file; attnpool caches other features and needs its own).

    Example: attnviz train photos/ --family psa --out my-psa.safetensors
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        run, written = _training_run(
            data, family, out, steps, batch_size, lr, floors, area, evidence,
            cache, init, holdout, holdout_per_folder, seed,
        )  # fmt: skip
    except AttnvizError as exc:
        raise _fail(exc) from None
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    cache_task = progress.add_task("caching trunk", total=None, info="")
    step_task = progress.add_task("training gates", total=steps, info="")

    def on_step(step: int, _total: int, stats: dict[str, float]) -> None:
        info = " ".join(f"{k}={v:.3f}" for k, v in stats.items())
        progress.update(step_task, completed=step, info=info)

    try:
        with progress:
            report = run(
                lambda done, total: progress.update(cache_task, completed=done, total=total),
                on_step,
            )
    except AttnvizError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: rerun the same command to resume training")
        raise typer.Exit(130) from None
    if report.resumed_from:
        out_console.print(f"resumed an interrupted run at step {report.resumed_from}")
    means = ", ".join(f"{o:.2f}" for o in report.holdout_map_means)
    out_console.print(
        f"wrote {written}: hold-out agreement {report.holdout_agreement:.1%} on "
        f"{report.holdout_images} photos" + (f"; mean of each map {means}" if means else "")
    )


def _training_run(
    data: list[Path], family: str, out: Path | None, steps: int, batch_size: int | None,
    lr: float | None, floors: str | None, area: float | None, evidence: float | None,
    cache: Path | None, init: Path | None, holdout: int, holdout_per_folder: int, seed: int,
) -> tuple[Callable[..., Any], Path]:  # fmt: skip
    """The training function of ``family`` with its settings bound, and the file it writes."""
    from functools import partial

    common: dict[str, Any] = {"data": data, "steps": steps, "holdout": holdout, "seed": seed,
                              "cache": cache, "holdout_per_folder": holdout_per_folder}  # fmt: skip
    # Options left unset take the family's own default.
    given = {"batch_size": batch_size, "lr": lr, "evidence": evidence}
    common |= {k: v for k, v in given.items() if v is not None}
    from attnviz.models.registry import LITE0_BLOCKS

    if init is not None and family not in LITE0_BLOCKS:
        raise UsageError("--init starts a nonlocal or deform block from a file")
    if family == "attnpool":
        from attnviz.training.pool import PoolTrainConfig, train_attention_pool

        if floors is not None:
            raise UsageError("--floors sets the gate families' floors, not attnpool's")
        chosen: dict[str, Any] = {k: v for k, v in (("out", out), ("area", area)) if v is not None}
        pool = PoolTrainConfig(**common, **chosen)
        return partial(train_attention_pool, pool), pool.out

    if area is not None:
        raise UsageError("--area weighs attnpool's map mean; the gate families have none")
    if floors is not None:
        try:
            common["floors"] = tuple(float(v) for v in floors.split(","))
        except ValueError:
            raise UsageError(
                f"--floors needs numbers like 0.95,0.95,0.95,0.7, got {floors!r}"
            ) from None
    if family in LITE0_BLOCKS:
        from attnviz.training.blocks import BlockTrainConfig, train_block

        if floors is not None:
            raise UsageError(f"--floors sets the gate families' floors, not {family}'s")
        block = BlockTrainConfig(**common, family=family, out=out, init=init)
        assert block.out is not None  # set by __post_init__
        return partial(train_block, block), block.out

    from attnviz.training.gates import TrainConfig, train_gates

    cfg = TrainConfig(**common, family=family, out=out)
    assert cfg.out is not None  # set by __post_init__
    return partial(train_gates, cfg), cfg.out


@app.command(cls=HelpCommand)
def doctor(ctx: typer.Context) -> None:
    """Check this installation: versions, GPUs, the default model's weights, the config file.

    Exits 1 when a check fails, so scripts and bug reports can rely on it.

    Example: attnviz doctor
    """
    from attnviz.cli.doctor import Status, failed, run_checks

    run_defaults = (ctx.default_map or {}).get("run") or {}
    checks = run_checks(Path(str(run_defaults.get("out", "attnviz-out"))))
    checks.append(_config_check(ctx.meta.get(CONFIG_META)))
    styles = {Status.OK: "green", Status.INFO: "cyan", Status.WARN: "yellow", Status.FAIL: "red"}
    title = f"attnviz {__version__} doctor"
    table = Table(title=title, title_justify="left")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        status = f"[{styles[check.status]}]{check.status.value:<6}[/]"
        table.add_row(check.name, status, _printable(check.detail))
        lines.append(f"{check.name:<{width}}  {status} {_printable(check.detail)}")
    unbounded = out_console.options.update(max_width=10_000)
    if out_console.measure(table, options=unbounded).maximum <= out_console.width:
        out_console.print(table)
    else:  # details hold paths the user may copy: one line each rather than a folded cell
        out_console.print(title)
        for line in lines:
            out_console.print(line, soft_wrap=True, highlight=False)
    if failed(checks):
        broken = ", ".join(c.name for c in checks if c.status is Status.FAIL)
        console.print(f"[bold red]broken:[/] {_printable(broken)}", highlight=False)
        raise typer.Exit(1)


def _config_check(loaded: object) -> Check:
    """The config files in effect, as one of the doctor's rows."""
    from attnviz.cli.config import CONFIG_FILE, PYPROJECT_FILE, Defaults
    from attnviz.cli.doctor import Check, Status

    if isinstance(loaded, AttnvizError):
        return Check("config", Status.FAIL, str(loaded))
    files = loaded.files if isinstance(loaded, Defaults) else []
    if not files:
        return Check(
            "config", Status.INFO, f"no {CONFIG_FILE} or [tool.attnviz] in {PYPROJECT_FILE} here"
        )
    return Check("config", Status.OK, ", ".join(str(f) for f in files))


@app.command(cls=HelpCommand)
def gallery(
    out: Annotated[Path, typer.Argument(help="An output folder written by `attnviz run`.")],
) -> None:
    """Write OUT/index.html: a page to browse, sort and filter the figures of a run.

    Example: attnviz gallery figures/
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from attnviz.render.gallery import write_gallery

    progress = Progress(
        "thumbnails", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        transient=True,
    )  # fmt: skip
    task = progress.add_task("gallery", total=None)
    try:
        with progress:
            result = write_gallery(
                out, lambda done, total: progress.update(task, completed=done, total=total)
            )
    except AttnvizError as exc:
        raise _fail(exc) from None
    for note in result.notes:
        console.print(f"[yellow]note:[/] {_printable(note)}", highlight=False, soft_wrap=True)
    failed = f", {result.failed} failed input(s) listed" if result.failed else ""
    out_console.print(
        f"wrote {_printable(result.path)}: {result.items} figure(s){failed}", highlight=False
    )


@app.command(cls=HelpCommand)
def merge(
    out: Annotated[Path, typer.Argument(help="The output folder the shard jobs shared.")],
) -> None:
    """Join the manifests of `attnviz run --shard K/N` jobs into OUT/manifest.jsonl.

    Exits 1 when shards of the split are missing, were killed or still run (the merge is
    written anyway, with what the killed ones finished).

    Example: attnviz merge /shared/val-maps
    """
    from attnviz.io.shards import merge_manifests

    try:
        report = merge_manifests(out)
    except AttnvizError as exc:
        raise _fail(exc) from None
    failed = f", {report.failed} failed" if report.failed else ""
    out_console.print(
        f"wrote {_printable(report.path)}: {report.records} input(s){failed} from "
        f"{len(report.shards)} shard manifest(s)",
        highlight=False,
    )
    problems = [
        (report.missing, "no manifest yet for shard(s)"),
        (report.interrupted, "killed before the end (their finished inputs are merged; rerun "
                             "them to finish): shard(s)"),
        (report.running, "still running: shard(s)"),
    ]  # fmt: skip
    for shards, what in problems:
        if shards:
            console.print(f"[bold red]incomplete:[/] {what} {', '.join(shards)}", highlight=False)
    if report.missing or report.interrupted or report.running:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
