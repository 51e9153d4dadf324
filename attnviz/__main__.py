"""``python -m attnviz``: the same command line as ``attnviz``."""

from attnviz.cli import console

console()
