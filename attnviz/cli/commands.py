"""The attnviz command line: the Typer app, its global options, and its commands in the
order ``attnviz --help`` lists them.

Nothing here imports torch at module level, so ``attnviz --help`` answers at once; each
command imports what it needs when it runs."""

from __future__ import annotations

import os
import sys
import threading
from typing import Annotated

import typer

from attnviz import __version__
from attnviz.cli.compare import compare
from attnviz.cli.context import load_config
from attnviz.cli.doctor import doctor
from attnviz.cli.evaluate import eval_command
from attnviz.cli.gallery import gallery
from attnviz.cli.help import HelpCommand, HelpGroup
from attnviz.cli.merge import merge
from attnviz.cli.models import layers, models
from attnviz.cli.run import run
from attnviz.cli.train import train

app = typer.Typer(
    cls=HelpGroup,
    help="See where a vision network's spatial attention lands.\n\n"
    "Example: attnviz run photo.jpg --out figures/",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


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
    load_config(ctx)


for command in (run, compare, layers, models, eval_command, train, doctor, gallery, merge):
    app.command(cls=HelpCommand, name="eval" if command is eval_command else None)(command)


def main() -> None:
    """The command line as a function: runs the command in ``sys.argv`` and, like any click
    program, ends by raising SystemExit with its exit code."""
    app()


def console() -> None:
    """The ``attnviz`` process (console script and ``python -m attnviz``): :func:`main`, then
    the end of the process.

    When the command has finished, torch is loaded and nothing else needs the interpreter
    (no other non-daemon thread, no profiler, tracer or monitoring tool), the process ends
    without tearing the interpreter down: everything is written and closed by then, and
    unloading torch's libraries would add about 0.4 s to every run (docs/performance.md).
    """
    try:
        main()
    except SystemExit as done:
        code = done.code
        if (code is None or isinstance(code, int)) and _nothing_left_to_finish() and _flushed():
            logging = sys.modules.get("logging")  # torch's; not imported here, for --help's sake
            if logging is not None:
                logging.shutdown()  # what its exit hook would do: flush and close the handlers
            os._exit(code or 0)
        raise


def _flushed() -> bool:
    """Whether stdout and stderr hold nothing more: flushed, or their reader has gone (a
    broken pipe). Any other failure (a full disk) is left to the normal exit, which reports
    it and exits non-zero."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            continue
        except OSError:
            return False
    return True


def _nothing_left_to_finish() -> bool:
    """Whether torch is loaded (else a normal exit is as fast) and no one would miss the
    interpreter's teardown: no non-daemon thread but this one (a normal exit would wait for
    it), no profiler, tracer or monitoring tool (their reports are written at exit)."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: coverage and debuggers
    return (
        "torch" in sys.modules
        and all(t.daemon for t in others)
        and sys.getprofile() is None
        and sys.gettrace() is None
        and (monitoring is None or all(monitoring.get_tool(i) is None for i in range(6)))
    )
