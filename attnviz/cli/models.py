"""``attnviz models`` and ``attnviz layers``: the built-in models, and a model's attention
layers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from attnviz import DEFAULT_MODEL
from attnviz.cli.flags import Model
from attnviz.cli.output import fail, out_console
from attnviz.errors import AttnvizError


def layers(
    model: Model = DEFAULT_MODEL,
    weights: Annotated[
        Path | None,
        typer.Option(help="Load these weights too, to check that they fit (as in run)."),
    ] = None,
    size: Annotated[int | None, typer.Option(help="Input size (default: model's).")] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Also list these modules (as in run's --layer): user selections."),
    ] = None,
) -> None:
    """List a model's attention layers: name, family, shapes, and how each was found.

    Found by the attention protocol, an adapter, what a module computes, or --layer.

    Example: attnviz layers --model cbam-resnet50
    """
    from attnviz.engine.describe import describe_layers

    try:
        rows, default = describe_layers(model, size, layer, weights)
    except AttnvizError as exc:
        raise fail(exc) from None
    table = Table(title=f"attention layers of {model}", title_justify="left")
    for column in ("#", "name", "family", "feature shape", "map shape", "found by"):
        table.add_column(column)
    # Indices count attention layers only: --layer -1 never means a user-selected module.
    indexed = [r for r in rows if r.found_by != "user selection"]
    lines = []
    for row in rows:
        mark = " (default)" if row.name == default else ""
        index = str(indexed.index(row) - len(indexed)) if row in indexed else ""
        cells = (row.family, _shape(row.feature), _shape(row.map), row.found_by)
        table.add_row(index, row.name + mark, *cells)
        lines.append(f"{index:>4}  {row.name}{mark}  [dim]({', '.join(cells)})[/]")
    unbounded = out_console.options.update(max_width=10_000)
    if out_console.measure(table, options=unbounded).maximum <= out_console.width:
        out_console.print(table)
    else:  # names are copied into --layer: one line each rather than a cut table cell
        out_console.print(f"attention layers of {model} (family, feature, map, found by):")
        for line in lines:
            out_console.print(line, soft_wrap=True, highlight=False)
    # What a discovered pattern's map shows, once per pattern.
    for pattern, map_is in dict.fromkeys((r.family, r.map_is) for r in rows if r.map_is):
        out_console.print(f"{pattern}: the map is {map_is}", soft_wrap=True)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def models(
    name: Annotated[str | None, typer.Argument(help="A model to describe in full.")] = None,
) -> None:
    """List the built-in models, one a line (* marks the default); NAME describes one.

    Example: attnviz models lite0-cbam
    """
    from attnviz.models.registry import MODELS, get_spec

    if name is not None:
        try:
            spec = get_spec(name)
        except AttnvizError as exc:
            raise fail(exc) from None
        default = " (the default)" if spec.name == DEFAULT_MODEL else ""
        out_console.print(f"[bold]{spec.name}[/]{default}", highlight=False)
        for label, value in (
            ("family", spec.family), ("input size", str(spec.input_size)),
            ("weights", spec.weights.value),
            ("default layer", "the last" if spec.default_layer == "-1" else spec.default_layer),
        ):  # fmt: skip
            out_console.print(f"  {label + ':':15}{value}", highlight=False, soft_wrap=True)
        out_console.print(spec.description, highlight=False, markup=False)
        return
    # One line a model, nothing cut: names are typed into --model; `attnviz models NAME`
    # gives the description.
    name_width = max(len(n) for n in MODELS) + 2
    source_width = max(len(s.weights.value) for s in MODELS.values()) + 2
    header = f"  {'name':{name_width}}{'weights':{source_width}}attention"
    out_console.print(header, style="bold", highlight=False, markup=False)
    for spec in MODELS.values():
        marker = "*" if spec.name == DEFAULT_MODEL else " "
        out_console.print(
            f"{marker} {spec.name:{name_width}}{spec.weights.value:{source_width}}{spec.family}",
            highlight=False, soft_wrap=True, markup=False,
        )  # fmt: skip
    out_console.print("* the default; attnviz models NAME describes one", highlight=False)
