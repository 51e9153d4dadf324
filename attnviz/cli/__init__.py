"""The command line. ``app`` holds the Typer app and lists the commands; each command has
a module of its own (run, compare, models, evaluate, train, doctor, outputs), and they
share ``options`` (flags defined once), ``output`` (consoles, errors, summaries),
``context`` (config-file defaults, --print-config), ``config`` (reading the files) and
``help`` (the --help screens).

Nothing here imports torch at start-up: each command imports the engine when it runs.
"""

from attnviz.cli.app import main

__all__ = ["main"]
