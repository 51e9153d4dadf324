"""``attnviz gallery``: OUT/index.html, a page to browse, sort and filter a run's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.output import console, counting, fail, out_console, printable
from attnviz.errors import AttnvizError


def gallery(
    out: Annotated[Path, typer.Argument(help="An output folder written by `attnviz run`.")],
) -> None:
    """Write OUT/index.html: a page to browse, sort and filter the figures of a run.

    Example: attnviz gallery figures/
    """
    from attnviz.render.gallery import write_gallery

    try:
        with counting("thumbnails") as progress:
            result = write_gallery(out, progress)
    except AttnvizError as exc:
        raise fail(exc) from None
    for note in result.notes:
        console.print(f"[yellow]note:[/] {printable(note)}", highlight=False, soft_wrap=True)
    failed = f", {result.failed} failed input(s) listed" if result.failed else ""
    out_console.print(
        f"wrote {printable(result.path)}: {result.items} figure(s){failed}", highlight=False
    )
