"""The command line. ``commands`` holds the Typer app (``app``) and lists the commands in
the order --help shows them; each command has a module of its own (run, compare, models,
evaluate, train, doctor, gallery, merge), and they share ``flags`` (defined once),
``output`` (consoles, errors, summaries), ``context`` (config-file defaults,
--print-config), ``config`` (reading the files) and ``help`` (the --help screens).

Nothing here imports torch at start-up: each command imports the engine when it runs.
"""

from attnviz.cli.commands import app, console, main

__all__ = ["app", "console", "main"]
