"""``attnviz eval``: how well each map lands on boxed objects, beside the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from attnviz import DEFAULT_MODEL
from attnviz.cli.flags import Device, Model
from attnviz.cli.output import console, counting, fail, out_console, printable
from attnviz.errors import AttnvizError, UsageError


def eval_command(
    images: Annotated[Path, typer.Argument(help="Folder of the photos named in the CSV.")],
    boxes: Annotated[
        Path, typer.Option(help="CSV: file,imagenet_idx,width,height,x0,y0,x1,y1 per box.")
    ],
    model: Model = DEFAULT_MODEL,
    weights: Annotated[
        Path | None,
        typer.Option(help="Checkpoint, or gates written by `attnviz train` (as in run)."),
    ] = None,
    layer: Annotated[str, typer.Option(help="Attention layers to score (as in run).")] = "all",
    device: Device = "auto",
    batch_size: Annotated[
        int,
        typer.Option(help="Photos decoded together (on a CPU the model sees one at a time)."),
    ] = 50,
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
    if per_photo is not None and not per_photo.parent.is_dir():
        raise fail(UsageError(f"--per-photo: folder {per_photo.parent} does not exist"))
    import json

    # Torch and the model only once the flags are known to be usable.
    from attnviz.evaluation.evaluate import evaluate, write_per_photo_csv

    try:
        with counting("eval", hidden=as_json) as progress:
            result = evaluate(
                images, boxes, model, layer, max(1, batch_size), progress,
                weights=weights, device=device, size=size,
            )  # fmt: skip
        if per_photo is not None:
            write_per_photo_csv(per_photo, result.per_photo)
    except AttnvizError as exc:
        raise fail(exc) from None
    if result.missing:
        console.print(
            f"[yellow]note:[/] {len(result.missing)} photo(s) named in {printable(str(boxes))} "
            f"are not in {printable(str(images))} and were skipped, e.g. "
            f"{printable(result.missing[0].name)}",
            highlight=False,
        )
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(
        title=f"{printable(model)} on {result.photos} photos (%)", title_justify="left",
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
        table.add_row(printable(name), *(f"{scores[c]:.1f}" for c in columns), *spans)
    out_console.print(table)

    def pct(value: float | None) -> str:
        return "n/a (no gates to switch off)" if value is None else f"{value:.1f} %"

    out_console.print(
        f"top-1 {result.top1:.1f} % (trunk {pct(result.trunk_top1)}); "
        f"teacher agreement {pct(result.teacher_agreement)}"
    )
