"""The options several commands take, each defined once: a command's signature names the
type (``model: Model = DEFAULT_MODEL``) and gets the same flag, help and metavar as every
other command that takes it."""

from __future__ import annotations

from typing import Annotated

import typer

MODEL_HELP = (
    "A built-in model (`attnviz models`), file.py:factory or package.module:factory (your "
    "code), or timm:NAME."
)

Model = Annotated[str, typer.Option(help=MODEL_HELP, metavar="MODEL")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
Format = Annotated[str, typer.Option("--format", help="png, jpg or webp.")]
Glob = Annotated[str | None, typer.Option(help="Only files matching this glob.")]
MaxPixels = Annotated[
    int, typer.Option(help="Refuse images with more pixels than this (decompression bombs).")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only errors and failed inputs, one line each.")
]
