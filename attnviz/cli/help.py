"""Help screens that read in an 80-column terminal, in the two-column style of uv and ruff.

typer's own screen gives each option five columns (long and short names, their negations,
a ``<type>``), which leaves a help column of about 20 characters at 80 columns, cuts
names and defaults, and keeps the hard line breaks of docstrings. Here every option is
one name column (``--out PATH``, ``--gallery / --no-gallery``; a name too long for it
takes a line of its own) and one help column that rich wraps to the terminal, so every
name and value a user may copy is printed whole. Help texts are shown as written (never
read as rich markup), with the default the command will use, config files included.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# typer brings its own copy of click (typer._click): its classes are reached through typer.
Context = Any

# The name column never takes more than this; longer names get a line of their own.
NAME_WIDTH = 28
# Narrower than this, the help column gives up its place beside the names.
MIN_HELP_WIDTH = 24
# Most specific first: bool is an int, and a Path annotation may be a subclass.
_KINDS: tuple[tuple[str, type], ...] = (
    ("bool", bool), ("int", int), ("float", float), ("path", Path), ("str", str),
)  # fmt: skip
_CLICK_KINDS = {"boolean": "bool", "integer": "int", "float": "float", "path": "path"}
_METAVARS = {"int": "INT", "float": "FLOAT", "path": "PATH", "str": "TEXT"}


def option_kind(param: object) -> str:
    """What value an option takes: bool, int, float, path or str (attnviz.cli.config's kinds)."""
    # Newer typer describes a parameter by its annotation; older ones by click's type.
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return _CLICK_KINDS.get(getattr(getattr(param, "type", None), "name", ""), "str")
    annotation = descriptor.annotation
    if isinstance(annotation, type):
        return next((kind for kind, cls in _KINDS if issubclass(annotation, cls)), "str")
    return "str"


class HelpCommand(TyperCommand):
    """A command whose --help is :func:`print_help`'s screen."""

    def format_help(self, ctx: Context, _formatter: Any) -> None:
        print_help(self, ctx)


class HelpGroup(TyperGroup):
    """The app's group: its --help lists the commands in the same style."""

    def format_help(self, ctx: Context, _formatter: Any) -> None:
        print_help(self, ctx)


def print_help(command: TyperCommand | TyperGroup, ctx: Context) -> None:
    """Prints the --help screen of a command or of the app to stdout: usage, the help text's
    paragraphs, the arguments, the options and (for the app) the commands."""
    console = Console(color_system=None if colour_off() else "auto", highlight=False)
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if isinstance(p, TyperArgument)]
    options = [p for p in params if isinstance(p, TyperOption)]
    parts: list[Any] = [Padding(_usage(ctx, arguments, options), (1, 1))]
    parts += [Padding(text, (0, 1, 1, 1)) for text in _paragraphs(command.help or "")]
    if arguments:
        parts.append(_panel(console, "Arguments", [_argument_row(p) for p in arguments]))
    if options:
        parts.append(_panel(console, "Options", [_option_row(ctx, p) for p in options]))
    if isinstance(command, TyperGroup):
        rows = [
            (Text(name, style="bold cyan"), _first_paragraph(sub.help or ""))
            for name in command.list_commands(ctx)
            if (sub := command.get_command(ctx, name)) is not None and not sub.hidden
        ]
        parts.append(_panel(console, "Commands", rows))
    console.print(Group(*parts))


def colour_off() -> bool:
    """Whether output is plain, without colour or styles: NO_COLOR is set (to anything but the empty
    string) or TERM is dumb."""
    # NO_COLOR (no-color.org) means any non-empty value. rich alone would still send bold
    # and dim escapes under NO_COLOR when FORCE_COLOR forces a terminal; a dumb terminal
    # shows every escape as junk.
    return os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb"


def _usage(ctx: Context, arguments: list[TyperArgument], options: list[TyperOption]) -> Text:
    words = [ctx.command_path]
    if options:
        words.append("[OPTIONS]")
    if isinstance(ctx.command, TyperGroup):
        words.append("COMMAND [ARGS]...")
    for argument in arguments:
        name = _argument_name(argument)
        words.append(name if argument.required else f"[{name}]")
    usage = Text("Usage: ", style="yellow")
    usage.append(" ".join(words), style="bold")
    return usage


def _paragraphs(help_text: str) -> list[Text]:
    """A docstring's paragraphs, each rewrapped by rich: its own line breaks are dropped."""
    return [Text(" ".join(p.split())) for p in inspect.cleandoc(help_text).split("\n\n") if p]


def _first_paragraph(help_text: str) -> Text:
    paragraphs = _paragraphs(help_text)
    return paragraphs[0] if paragraphs else Text("")


def _argument_name(argument: TyperArgument) -> str:
    return (argument.name or "").upper() + ("..." if argument.nargs == -1 else "")


def _argument_row(argument: TyperArgument) -> tuple[Text, Text]:
    help_text = Text(" ".join((getattr(argument, "help", None) or "").split()))
    if argument.required:
        help_text.append(" (required)", style="dim")
    return Text(_argument_name(argument), style="bold cyan"), help_text


def _option_row(ctx: Context, option: TyperOption) -> tuple[Text, Text]:
    names = Text()
    for i, flag in enumerate(sorted(option.opts, key=lambda o: o.startswith("--"))):
        names.append(", " if i else "", style="")
        names.append(flag, style="bold cyan")
    for flag in option.secondary_opts:
        names.append(" / ", style="")
        names.append(flag, style="bold magenta")
    if not option.is_flag:
        metavar = option.metavar or _METAVARS.get(option_kind(option), "TEXT")
        names.append(f" {metavar}", style="yellow")
    help_text = Text(" ".join((option.help or "").split()))
    if option.required:
        help_text.append(" (required)", style="dim")
    default = _shown_default(ctx, option)
    if default is not None:
        help_text.append(f" (default: {default})", style="dim")
    return names, help_text


def _shown_default(ctx: Context, option: TyperOption) -> str | None:
    """The default this run would use (config files included), or None to show nothing."""
    if not option.show_default or option.name == "help":
        return None
    value = option.get_default(ctx, call=False)
    if value is None or value == () or callable(value):
        return None
    if option.is_flag:
        # An off switch is the plain case: only a switch that is on (a config file's) says so.
        return max(option.opts, key=len) if value else None
    return str(value)


def _panel(console: Console, title: str, rows: list[tuple[Text, Text]]) -> Panel:
    """Rows of (name, help) in two columns inside a titled box as wide as the terminal."""
    inner = console.width - 4  # the box's borders and padding
    name_width = min(max(len(name) for name, _ in rows), NAME_WIDTH)
    if inner - name_width - 2 < MIN_HELP_WIDTH:  # a narrow terminal: names on lines of their own
        name_width = 2
    help_width = max(inner - name_width - 2, 1)
    lines: list[Text] = []
    for name, help_text in rows:
        wrapped = list(help_text.wrap(console, help_width)) or [Text("")]
        if len(name) > name_width:  # too long to share a line with its help
            lines.append(name)
            wrapped = [Text(" " * (name_width + 2)) + line for line in wrapped]
        else:
            wrapped[0] = name + Text(" " * (name_width + 2 - len(name))) + wrapped[0]
            wrapped[1:] = [Text(" " * (name_width + 2)) + line for line in wrapped[1:]]
        lines += wrapped
    body = Text("\n").join(lines)
    body.no_wrap = True
    return Panel(body, title=title, title_align="left", border_style="dim")
