"""The project's own error type: a message a user can act on, shown as one line by the CLI."""


class AttnvizError(Exception):
    """A user-facing failure (bad input, bad flag, missing weights). Never a bug."""


class UsageError(AttnvizError):
    """A bad flag or choice (unknown model, layer or colormap): the CLI exits with code 2."""


class OutputError(AttnvizError):
    """The output folder cannot take more files (disk full, read-only): the run stops."""
