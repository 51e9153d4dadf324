"""What a command's click context knows beyond its flags: the defaults of attnviz.toml and
pyproject.toml (loaded into click's default_map), where each option's value came from,
--print-config's TOML, and --quiet against --verbose."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from attnviz.cli.help import option_kind
from attnviz.cli.output import fail
from attnviz.errors import UsageError

if TYPE_CHECKING:
    from attnviz.cli.config import Schema

# Where the config files' defaults are kept for the commands (see load_config).
CONFIG_META = "attnviz.cli.config"


def load_config(ctx: typer.Context) -> None:
    """Defaults from attnviz.toml / pyproject.toml in the working directory, via default_map."""
    from attnviz.cli.config import load_defaults

    try:
        defaults = load_defaults(Path.cwd(), option_schema(ctx.command))
    except UsageError as exc:
        if ctx.invoked_subcommand == "doctor":  # a broken config file is one of its rows
            ctx.meta[CONFIG_META] = exc
            return
        raise fail(exc) from None
    ctx.meta[CONFIG_META] = defaults
    ctx.default_map = {**defaults.values, **(ctx.default_map or {})}


# Options that make no sense as a project default.
NOT_CONFIGURABLE = frozenset({"help", "print_config", "install_completion", "show_completion"})


def option_schema(group: object) -> Schema:
    """Each command's options as attnviz.cli.config describes them, read off the click commands."""
    from attnviz.cli.config import OptionSpec

    commands = getattr(group, "commands", {})
    return {
        name: [
            OptionSpec(
                param.name,
                tuple(o.lstrip("-") for o in param.opts if o.startswith("--")),
                option_kind(param),
            )
            for param in command.params
            if param.param_type_name == "option"
            and param.name
            and param.name not in NOT_CONFIGURABLE
        ]
        for name, command in commands.items()
    }


def verbosity_of(ctx: typer.Context, quiet: bool, verbose: bool) -> int:
    """-1 quiet, 0 normal, 1 verbose. A flag overrides the other one set in a config file."""
    if not (quiet and verbose):
        return -1 if quiet else int(verbose)
    quiet_flag, verbose_flag = (source(ctx, name) == "flag" for name in ("quiet", "verbose"))
    if quiet_flag != verbose_flag:
        return -1 if quiet_flag else 1
    files = sorted({source(ctx, "quiet"), source(ctx, "verbose")})
    where = "given together" if quiet_flag else f"both set in {' and '.join(files)}"
    raise UsageError(f"--quiet and --verbose are mutually exclusive ({where})")


def source(ctx: typer.Context, name: str) -> str:
    """Where an option's value came from: flag, environment, attnviz.toml, ... or default."""
    given = ctx.get_parameter_source(name)
    kind = given.name if given is not None else "DEFAULT"
    if kind == "DEFAULT_MAP":
        from attnviz.cli.config import Defaults

        defaults = ctx.meta.get(CONFIG_META)
        found = (
            defaults.source(ctx.info_name or "", name) if isinstance(defaults, Defaults) else None
        )
        return found or "config"
    return {"COMMANDLINE": "flag", "ENVIRONMENT": "environment"}.get(kind, "default")


def effective_config(ctx: typer.Context) -> str:
    """The command's options as a TOML table to paste into attnviz.toml, sources as comments."""
    from attnviz.cli.config import format_toml

    rows = [
        (param.opts[0].lstrip("-"), _plain(ctx.params[param.name]), source(ctx, param.name))
        for param in ctx.command.params
        if param.param_type_name == "option" and param.name and param.name not in NOT_CONFIGURABLE
    ]
    return format_toml(ctx.info_name or "run", rows)


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value
