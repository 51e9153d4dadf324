"""Commands on a run's output folder: ``attnviz gallery`` (index.html) and ``attnviz merge``
(the manifests of --shard jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.output import console, fail, out_console, printable
from attnviz.errors import AttnvizError


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
        raise fail(exc) from None
    for note in result.notes:
        console.print(f"[yellow]note:[/] {printable(note)}", highlight=False, soft_wrap=True)
    failed = f", {result.failed} failed input(s) listed" if result.failed else ""
    out_console.print(
        f"wrote {printable(result.path)}: {result.items} figure(s){failed}", highlight=False
    )


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
        raise fail(exc) from None
    failed = f", {report.failed} failed" if report.failed else ""
    out_console.print(
        f"wrote {printable(report.path)}: {report.records} input(s){failed} from "
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
