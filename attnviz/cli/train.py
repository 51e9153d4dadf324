"""``attnviz train``: distil the frozen trunk into lite0-FAMILY's attention, resumably."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from attnviz.cli.output import console, fail, out_console
from attnviz.errors import AttnvizError, UsageError


def train(
    data: Annotated[list[Path], typer.Argument(help="Folders of training photos (no labels).")],
    family: Annotated[
        str,
        typer.Option(
            help="Gate family: cbam, psa, multiscale, lightweight, dynamic or bam (lite0-FAMILY's "
            "four gates), attnpool (lite0-attnpool's attention-gated pooling), nonlocal or "
            "deform (lite0-FAMILY's block after block 10)."
        ),
    ] = "cbam",
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the gate weights (default: pretrained/lite0-FAMILY)."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 600,
    batch_size: Annotated[
        int | None, typer.Option(help="Photos per step (default: 32; attnpool 64).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate (default: 0.02; attnpool 0.003; nonlocal, deform 0.001)."),
    ] = None,
    floors: Annotated[
        str | None,
        typer.Option(
            help="What each gate keeps where its map is 0 (block4,10,15,head) "
            "(default: 0.95,0.95,0.95,0.7); not attnpool."
        ),
    ] = None,
    offsets: Annotated[
        str | None,
        typer.Option(
            help="Where each gate's map passes 0.5, M = sigmoid(4 z + offset), z the logits "
            "standardised per photo (block4,10,15,head) (default: -4,-4,-4,-4); not attnpool."
        ),
    ] = None,
    area: Annotated[
        float | None,
        typer.Option(help="attnpool only: weight of the map's mean (default: 0.6)."),
    ] = None,
    evidence: Annotated[
        float | None,
        typer.Option(help="Weight of the agreement with the trunk's class evidence (default: 1)."),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="File to keep the frozen trunk's features for reruns.")
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="nonlocal and deform only: start from this block's weights."),
    ] = None,
    holdout: Annotated[int, typer.Option(help="Photos kept aside to measure agreement.")] = 500,
    holdout_per_folder: Annotated[
        int, typer.Option(help="Keep aside at least this many from each data folder too.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train lite0-FAMILY's attention by distilling the frozen trunk (no labels needed).

    Interrupted runs resume: the same command continues from the last saved step.
    --cache keeps the trunk's features for reruns (the gate families, nonlocal and
    deform share one file; attnpool caches other features and needs its own).

    Example: attnviz train photos/ --family psa --out my-psa.safetensors
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        run, written = _training_run(
            data, family, out, steps=steps, batch_size=batch_size, lr=lr, floors=floors,
            offsets=offsets, area=area, evidence=evidence, cache=cache, init=init,
            holdout=holdout, holdout_per_folder=holdout_per_folder, seed=seed,
        )  # fmt: skip
    except AttnvizError as exc:
        raise fail(exc) from None
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    cache_task = progress.add_task("caching trunk", total=None, info="")
    step_task = progress.add_task("training gates", total=steps, info="")

    def on_step(step: int, _total: int, stats: dict[str, float]) -> None:
        info = " ".join(f"{k}={v:.3f}" for k, v in stats.items())
        progress.update(step_task, completed=step, info=info)

    try:
        with progress:
            report = run(
                lambda done, total: progress.update(cache_task, completed=done, total=total),
                on_step,
            )
    except AttnvizError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: rerun the same command to resume training")
        raise typer.Exit(130) from None
    if report.resumed_from:
        out_console.print(f"resumed an interrupted run at step {report.resumed_from}")
    means = ", ".join(f"{o:.2f}" for o in report.holdout_map_means)
    out_console.print(
        f"wrote {written}: hold-out agreement {report.holdout_agreement:.1%} on "
        f"{report.holdout_images} photos" + (f"; mean of each map {means}" if means else "")
    )


def _training_run(
    data: list[Path], family: str, out: Path | None, *, steps: int, batch_size: int | None,
    lr: float | None, floors: str | None, offsets: str | None, area: float | None,
    evidence: float | None,
    cache: Path | None, init: Path | None, holdout: int, holdout_per_folder: int, seed: int,
) -> tuple[Callable[..., Any], Path]:  # fmt: skip
    """The training function of ``family`` with its settings bound, and the file it writes."""
    from functools import partial

    common: dict[str, Any] = {"data": data, "steps": steps, "holdout": holdout, "seed": seed,
                              "cache": cache, "holdout_per_folder": holdout_per_folder}  # fmt: skip
    # Options left unset take the family's own default.
    given = {"batch_size": batch_size, "lr": lr, "evidence": evidence}
    common |= {k: v for k, v in given.items() if v is not None}
    from attnviz.models.registry import LITE0_BLOCKS

    given_map_flags = " and ".join(
        f"--{flag}" for flag, value in (("floors", floors), ("offsets", offsets))
        if value is not None
    )  # fmt: skip
    if init is not None and family not in LITE0_BLOCKS:
        raise UsageError("--init starts a nonlocal or deform block from a file")
    if given_map_flags and (family == "attnpool" or family in LITE0_BLOCKS):
        raise UsageError(f"{given_map_flags} sets the gate families' maps, not {family}'s")
    if family == "attnpool":
        from attnviz.training.pool import PoolTrainConfig, train_attention_pool

        chosen: dict[str, Any] = {k: v for k, v in (("out", out), ("area", area)) if v is not None}
        pool = PoolTrainConfig(**common, **chosen)
        return partial(train_attention_pool, pool), pool.out

    if area is not None:
        raise UsageError("--area weighs attnpool's map mean; the gate families have none")
    for flag, text, example in (
        ("floors", floors, "0.95,0.95,0.95,0.7"),
        ("offsets", offsets, "-4,-3,-4,-4"),
    ):
        if text is not None:
            try:
                common[flag] = tuple(float(v) for v in text.split(","))
            except ValueError:
                raise UsageError(f"--{flag} needs numbers like {example}, got {text!r}") from None
    if family in LITE0_BLOCKS:
        from attnviz.training.blocks import BlockTrainConfig, train_block

        block = BlockTrainConfig(**common, family=family, out=out, init=init)
        assert block.out is not None  # set by __post_init__
        return partial(train_block, block), block.out

    from attnviz.training.gates import TrainConfig, train_gates

    cfg = TrainConfig(**common, family=family, out=out)
    assert cfg.out is not None  # set by __post_init__
    return partial(train_gates, cfg), cfg.out
