"""The attnviz command line. Thin: flags -> options -> library calls.

Nothing here imports torch at module level, so ``attnviz --help`` answers at once;
each command imports what it needs when it runs.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attnviz.errors import AttnvizError, UsageError

if TYPE_CHECKING:
    from attnviz.pipeline import RunSummary

app = typer.Typer(
    help="See where a vision network's spatial attention lands.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out_console = Console()


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


@app.command()
def run(
    inputs: Annotated[
        list[Path],
        # readable=False: an unreadable file is one failed input, reported by the run, not
        # a usage error that stops every other input.
        typer.Argument(help="Image files and/or folders (recursive).", readable=False),
    ],
    out: Annotated[Path, typer.Option(help="Output folder; folder inputs are mirrored.")] = Path(
        "attnviz-out"
    ),
    model: Annotated[str, typer.Option(help="Built-in model (see `attnviz models`).")] = (
        "lite0-cbam"
    ),
    weights: Annotated[
        Path | None, typer.Option(help="Checkpoint (safetensors or tensors-only torch file).")
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Layer name, glob, index (-1 = deepest), or 'all'. Comma-separated."),
    ] = None,
    cmap: Annotated[str, typer.Option(help="OpenCV colormap: jet, turbo, viridis, …")] = "jet",
    method: Annotated[
        str,
        typer.Option(help="attention (the layer's weight map) or gradcam (the trunk's Grad-CAM)."),
    ] = "attention",
    alpha: Annotated[float, typer.Option(help="Heatmap opacity over the photo, 0..1.")] = 0.5,
    size: Annotated[int | None, typer.Option(help="Network input size (default: model's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
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
        typer.Option(help="Panels in order: original, map, weighted, gradcam, contours."),
    ] = "original,map,weighted",
    layout: Annotated[
        str, typer.Option(help="row, grid, or separate (one file per panel, for papers).")
    ] = "row",
    norm: Annotated[
        str,
        typer.Option(
            help="Range of the heat maps: image (per image), global (one for the run) or "
            "fixed:LO,HI."
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
    random_init: Annotated[
        bool, typer.Option(help="Random weights: structure checks only, maps mean nothing.")
    ] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first input that fails.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Redo inputs whose outputs are already up to date.")
    ] = False,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images with more pixels than this (decompression bombs).")
    ] = 160_000_000,  # attnviz.io.DEFAULT_MAX_PIXELS, not imported: --help stays light
) -> None:
    """Write a triptych (photo | weight map | weighted features) for every input image.

    Example: attnviz run photos/ --layer all --cmap turbo --out figures/
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from attnviz.pipeline import RunOptions
    from attnviz.pipeline import run as run_pipeline

    opts = RunOptions(
        inputs=inputs, out=out, model=model, weights=weights, random_init=random_init,
        layer=layer, cmap=cmap, alpha=alpha, size=size, device=device, batch_size=batch_size,
        workers=workers,
        fmt=fmt.lower(), save_raw=save_raw, glob=glob, panel_height=panel_height,
        strict=strict, overwrite=overwrite, max_pixels=max_pixels, method=method.lower(),
        panels=tuple(p.strip().lower() for p in panels.split(",") if p.strip()),
        layout=layout.lower(), norm=norm.lower(), stats=stats, gallery=gallery, every=every,
        gif=gif, as_video=as_video,
    )  # fmt: skip
    progress = Progress(
        TextColumn("[bold]attnviz"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("run", total=None, rate="-")

    def on_progress(done: int, total: int) -> None:
        elapsed = progress.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
        progress.update(task, completed=done, total=total, rate=rate)

    try:
        with progress:
            summary = run_pipeline(opts, on_progress)
    except AttnvizError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        # A second Ctrl-C: outputs are atomic and the manifest was written on the way out.
        console.print("[bold red]interrupted[/]: rerun the same command to resume")
        raise typer.Exit(130) from None
    _print_summary(summary)
    if summary.signum is not None:
        raise typer.Exit(128 + summary.signum)
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(summary: RunSummary) -> None:
    table = Table(title="attnviz run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("processed", str(summary.processed))
    table.add_row("up to date", str(summary.skipped))
    table.add_row("failed", str(len(summary.failed)))
    table.add_row("output", _printable(summary.out))
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    out_console.print(table)
    for label, style, entries in (
        ("note", "yellow", summary.notes),
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


@app.command()
def layers(
    model: Annotated[str, typer.Option(help="Built-in model.")] = "lite0-cbam",
    size: Annotated[int | None, typer.Option(help="Input size (default: model's).")] = None,
) -> None:
    """List a model's attention layers: name, family, feature and map shapes.

    Example: attnviz layers --model cbam-resnet50
    """
    from attnviz.describe import describe_layers

    try:
        rows, default = describe_layers(model, size)
    except AttnvizError as exc:
        raise _fail(exc) from None
    table = Table(title=f"attention layers of {model}", title_justify="left")
    for column in ("#", "name", "family", "feature shape", "map shape"):
        table.add_column(column)
    for i, row in enumerate(rows):
        mark = " (default)" if row.name == default else ""
        table.add_row(
            str(i - len(rows)), row.name + mark, row.family, _shape(row.feature), _shape(row.map)
        )
    out_console.print(table)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


@app.command()
def models() -> None:
    """List the built-in models and where their weights come from.

    Example: attnviz models
    """
    from attnviz.models.registry import MODELS

    table = Table(title="built-in models", title_justify="left")
    for column in ("name", "family", "input size", "weights", "description"):
        table.add_column(column)
    for spec in MODELS.values():
        table.add_row(
            spec.name, spec.family, str(spec.input_size), spec.weights.value, spec.description
        )
    out_console.print(table)


@app.command(name="eval")
def eval_command(
    images: Annotated[Path, typer.Argument(help="Folder of the photos named in the CSV.")],
    boxes: Annotated[
        Path, typer.Option(help="CSV: file,imagenet_idx,width,height,x0,y0,x1,y1 per box.")
    ],
    model: Annotated[str, typer.Option(help="Built-in model or file.py:factory.")] = ("lite0-cbam"),
    layer: Annotated[str, typer.Option(help="Attention layers to score (as in run).")] = "all",
    batch_size: Annotated[int, typer.Option(help="Photos per forward pass.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """Score each attention map's localisation (pointing, energy, MaxBoxAccV2) vs baselines.

    Example: attnviz eval ../shared/data/boxes-dev/images --boxes ../shared/data/boxes-dev/boxes.csv
    """
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from attnviz.evaluate import evaluate

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
            )  # fmt: skip
    except AttnvizError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(
        title=f"{_printable(model)} on {result.photos} photos (%)", title_justify="left",
        caption="--json adds the box accuracy at each IoU level", caption_justify="left",
        box=box.SIMPLE_HEAD,  # no column rules: fits 80 columns
    )  # fmt: skip
    columns = ("pointing", "energy", "maxboxacc_v2")
    table.add_column("map", no_wrap=True)
    for column in ("pointing", "energy", "MaxBoxAccV2"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, scores in result.scores.items():
        table.add_row(_printable(name), *(f"{scores[c]:.1f}" for c in columns))
    out_console.print(table)

    def pct(value: float | None) -> str:
        return "n/a (no gates to switch off)" if value is None else f"{value:.1f} %"

    out_console.print(
        f"top-1 {result.top1:.1f} % (trunk {pct(result.trunk_top1)}); "
        f"teacher agreement {pct(result.teacher_agreement)}"
    )


@app.command()
def train(
    data: Annotated[list[Path], typer.Argument(help="Folders of training photos (no labels).")],
    out: Annotated[Path, typer.Option(help="Where to write the gate weights.")] = Path(
        "pretrained/lite0-cbam.safetensors"
    ),
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 600,
    batch_size: Annotated[int, typer.Option(help="Photos per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.02,
    target_open: Annotated[
        str, typer.Option(help="Share of positions each gate keeps open (block4,10,15,head).")
    ] = "0.995,0.99,0.98,0.5",
    sparsity: Annotated[float, typer.Option(help="Weight of the opening-budget penalty.")] = 10.0,
    evidence: Annotated[
        float, typer.Option(help="Weight of the agreement with the trunk's class evidence.")
    ] = 0.1,
    cache: Annotated[
        Path | None, typer.Option(help="File to keep the frozen trunk's features for reruns.")
    ] = None,
    holdout: Annotated[int, typer.Option(help="Photos kept aside to measure agreement.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train lite0-cbam's spatial gates by distilling the frozen trunk.

    Interrupted runs resume: the same command continues from the last saved step.

    Example: attnviz train ../shared/data/imagenette-train ../shared/data/imagenet-sample
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from attnviz.train import TrainConfig, train_gates

    try:
        targets = tuple(float(v) for v in target_open.split(","))
    except ValueError:
        msg = f"--target-open needs numbers like 0.9,0.5, got {target_open!r}"
        raise _fail(UsageError(msg)) from None
    cfg = TrainConfig(
        data=data, out=out, steps=steps, batch_size=batch_size, lr=lr, sparsity=sparsity,
        target_open=targets, evidence=evidence, holdout=holdout, seed=seed, cache=cache,
    )  # fmt: skip
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    cache_task = progress.add_task("caching trunk", total=None, info="")
    step_task = progress.add_task("training gates", total=steps, info="")

    def on_step(step: int, total: int, stats: dict[str, float]) -> None:
        info = " ".join(f"{k}={v:.3f}" for k, v in stats.items())
        progress.update(step_task, completed=step, info=info)

    try:
        with progress:
            report = train_gates(
                cfg,
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
    out_console.print(
        f"wrote {out}: hold-out agreement {report.holdout_agreement:.1%} on "
        f"{report.holdout_images} photos; mean gate opening "
        + ", ".join(f"{o:.2f}" for o in report.holdout_opening)
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
