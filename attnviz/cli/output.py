"""What the commands print: two consoles (messages on stderr, results on stdout), text
made safe for any terminal, one-line errors with their exit code, a counting progress bar,
and a run's summary."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attnviz.cli.help import colour_off
from attnviz.errors import AttnvizError, UsageError

if TYPE_CHECKING:
    from attnviz.engine.plan import RunSummary


if colour_off():
    # Usage-error screens use typer's own console, configured by this global.
    import typer.rich_utils

    typer.rich_utils.COLOR_SYSTEM = None


_COLOUR: Literal["auto"] | None = None if colour_off() else "auto"


console = Console(stderr=True, color_system=_COLOUR)


out_console = Console(color_system=_COLOUR)


def printable(text: object) -> str:
    r"""Text safe for any terminal: a non-UTF-8 file name shows its bytes as \x escapes."""
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


def fail(exc: AttnvizError) -> typer.Exit:
    """Prints ``exc`` as one ``error:`` line on stderr; returns the typer.Exit to raise: code 2
    for a UsageError, else 1."""
    console.print(f"[bold red]error:[/] {printable(exc)}", highlight=False, soft_wrap=True)
    return typer.Exit(2 if isinstance(exc, UsageError) else 1)


def print_summary(
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
        table.add_row("output", printable(summary.out))
        if gallery and (summary.out / "index.html").is_file():
            table.add_row("gallery", printable(summary.out / "index.html"))
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
                f"[{style}]{label}:[/] {printable(line)}", highlight=False, soft_wrap=True
            )
    if summary.stopped_by == "--strict":
        console.print("[bold red]stopped[/] at the first failure (--strict)")
    elif summary.stopped_by:
        console.print(
            f"[bold red]stopped[/] by {summary.stopped_by}: finished outputs and the manifest are "
            "written; rerun the same command to resume"
        )


@contextmanager
def counting(label: str, hidden: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A transient bar on stderr while inside; yields the ``(done, total)`` callback that
    moves it (compare, eval and gallery take one)."""
    # rich.progress is imported here: --help never draws a bar.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    progress = Progress(
        label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        transient=True, disable=hidden,
    )  # fmt: skip
    task = progress.add_task(label, total=None)
    with progress:
        yield lambda done, total: progress.update(task, completed=done, total=total)
