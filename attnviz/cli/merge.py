"""``attnviz merge``: join the manifests of ``attnviz run --shard K/N`` jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.output import console, fail, out_console, printable
from attnviz.errors import AttnvizError


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
