"""The command line: the Typer app and its commands (commands.py), their --help screens
(help.py), defaults from attnviz.toml (config.py) and the checks of ``attnviz doctor``.

Nothing here imports torch at start-up: each command imports the engine when it runs.
"""

from attnviz.cli.commands import app, main

__all__ = ["app", "main"]
