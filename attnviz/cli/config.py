"""Per-project defaults for the commands, from ``attnviz.toml`` or ``pyproject.toml``.

Both files are read from the working directory only (no search upwards: a figure made in
one folder must not silently take the settings of a parent project). ``attnviz.toml`` holds
one table per command::

    [run]
    cmap = "turbo"
    layer = "all"

``pyproject.toml`` holds the same tables under ``[tool.attnviz]`` (``[tool.attnviz.run]``).
When both set the same key, ``attnviz.toml`` wins, being the more specific file. A flag on
the command line always wins over both. Keys are the long option names, with dashes or
underscores (``panel-size`` or ``panel_size``).

This module knows nothing of click: the CLI describes its commands' options with
:class:`OptionSpec` and gets back a ``default_map`` for click.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnviz.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, before it joined the standard library
    import tomli as tomllib

CONFIG_FILE = "attnviz.toml"
PYPROJECT_FILE = "pyproject.toml"
# Lowest priority first: later files override earlier ones key by key.
CONFIG_FILES = (PYPROJECT_FILE, CONFIG_FILE)

# What a TOML value must be for each kind of option; "int" is also accepted for "float".
KIND_NAMES = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "path": "a string (a path)",
}


@dataclass(frozen=True)
class OptionSpec:
    """One option of a command, as a config file may set it."""

    name: str  # the parameter's name, the key of click's default_map (e.g. "panel_height")
    flags: tuple[str, ...]  # its long names without dashes (e.g. "panel-size", "panel-height")
    kind: str  # a key of KIND_NAMES

    def spellings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for f in self.flags for s in (f, f.replace("-", "_"))))


# Each command's name and the options its table may set.
Schema = Mapping[str, Sequence[OptionSpec]]


@dataclass
class Defaults:
    """The defaults the config files give: a click ``default_map`` and where each came from."""

    values: dict[str, dict[str, object]] = field(default_factory=dict)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # command -> name -> file
    files: list[Path] = field(default_factory=list)  # the files that held attnviz settings

    def source(self, command: str, name: str) -> str | None:
        return self.sources.get(command, {}).get(name)


def load_defaults(folder: Path, schema: Schema) -> Defaults:
    """The commands' defaults from the config files in ``folder``, checked against ``schema``.

    Raises UsageError (one line naming the file and the key) for malformed TOML, a table or
    key that no command has, or a value of the wrong type.
    """
    defaults = Defaults()
    for file_name in CONFIG_FILES:
        path = folder / file_name
        if not path.is_file():
            continue
        tables = _attnviz_tables(path)
        if tables is None:
            continue  # a pyproject.toml without [tool.attnviz]: not ours
        defaults.files.append(path)
        for command, table in tables.items():
            options = _check_table(path, command, table, schema)
            for name, value in options.items():
                defaults.values.setdefault(command, {})[name] = value
                defaults.sources.setdefault(command, {})[name] = file_name
    return defaults


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path.name}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{path.name}: cannot read: {exc.strerror or exc}") from None


def _attnviz_tables(path: Path) -> dict[str, object] | None:
    """The per-command tables of one file, or None when a pyproject.toml has no attnviz part."""
    data = _read_toml(path)
    if path.name != PYPROJECT_FILE:
        return data
    tool = data.get("tool")
    if not isinstance(tool, dict) or "attnviz" not in tool:
        return None
    tables = tool["attnviz"]
    if not isinstance(tables, dict):
        raise UsageError(
            f"{path.name}: [tool.attnviz] must be a table of commands, e.g. [tool.attnviz.run]"
        )
    return tables


def _table_label(path: Path, command: str) -> str:
    prefix = "tool.attnviz." if path.name == PYPROJECT_FILE else ""
    return f"[{prefix}{command}]"


def _check_table(path: Path, command: str, table: object, schema: Schema) -> dict[str, object]:
    """A command's table as {parameter name: value}, or a UsageError naming file and key."""
    if not isinstance(table, dict):
        # A flat `cmap = "turbo"`: options differ per command, so say which table takes it.
        owners = [c for c, specs in schema.items() if any(command in s.spellings() for s in specs)]
        raise UsageError(
            f"{path.name}: {command!r} must be inside a table naming its command, "
            f"e.g. {_table_label(path, owners[0] if owners else 'run')}"
        )
    if command not in schema:
        raise UsageError(
            f"{path.name}: unknown table {_table_label(path, command)}"
            f"{_did_you_mean(command, list(schema), _table_label(path, '{}'))}"
            f"; commands: {', '.join(schema)}"
        )
    by_key = {s: spec for spec in schema[command] for s in spec.spellings()}
    label = _table_label(path, command)
    options: dict[str, object] = {}
    for key, value in table.items():
        spec = by_key.get(key)
        if spec is None:
            raise UsageError(
                f"{path.name}: unknown key {key!r} in {label}"
                f"{_did_you_mean(key, list(by_key), '{!r}')}"
            )
        if spec.name in options:
            raise UsageError(f"{path.name}: {label} sets {key!r} twice (under two spellings)")
        options[spec.name] = _checked_value(path, label, key, value, spec.kind)
    return options


def _checked_value(path: Path, label: str, key: str, value: object, kind: str) -> object:
    # bool is an int in Python, but `batch-size = true` is certainly a mistake.
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "path": isinstance(value, str),
    }.get(kind, isinstance(value, str))
    if not ok:
        shown = json.dumps(value, default=str)
        raise UsageError(
            f"{path.name}: {label} {key} must be {KIND_NAMES.get(kind, 'a string')}, "
            f"got {shown} ({_toml_type(value)})"
        )
    return float(value) if kind == "float" and isinstance(value, int | float) else value


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(word: str, choices: Sequence[str], shape: str) -> str:
    close = _suggest(word, choices)
    return f" (did you mean {shape.format(close)}?)" if close else ""


# --- writing the effective options back out (attnviz run --print-config) ---------------


def toml_value(value: object) -> str | None:
    """``value`` as a TOML literal, or None when TOML cannot say it (an unset option)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    # A JSON string is a TOML basic string, except that TOML also forbids a raw DEL.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def format_toml(command: str, rows: Sequence[tuple[str, object, str]]) -> str:
    """A ``[command]`` table of (key, value, source) rows, each source as a comment.

    Unset options (None) are written commented out, so the text stays valid TOML to paste
    into attnviz.toml.
    """
    lines = [f"[{command}]"]
    for key, value, source in rows:
        literal = toml_value(value)
        if literal is None:
            lines.append(f"# {key} = (not set)  # {source}")
        else:
            lines.append(f"{key} = {literal}  # {source}")
    return "\n".join(lines) + "\n"
