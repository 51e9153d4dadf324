"""attnviz on Ray Data: past one machine, Ray spreads the inputs over its workers.

Needs the ``ray`` extra (``pip install 'attnviz[ray]'`` or ``uv sync --extra ray``).

One call does what ``attnviz run`` does, with Ray's actors doing the forward passes and
the writing; the same atomic writer, manifest and resume apply::

    from pathlib import Path

    import ray
    from attnviz.integrations.ray_data import run_on_ray
    from attnviz.engine.options import RunOptions

    ray.init()  # optional: else Ray Data starts a local runtime (or joins RAY_ADDRESS's)
    summary = run_on_ray(
        RunOptions(inputs=[Path("/data/val")], out=Path("/shared/val-maps")),
        concurrency=4,  # actors, each holding one copy of the model
        num_gpus=1,     # per actor; device "auto" then runs each actor on its GPU
    )
    print(summary.processed, summary.skipped, summary.failed)

Rerunning the same call skips the inputs whose outputs are up to date, like ``attnviz
run``. ``out`` must be a folder every Ray node can write to (a shared file system), and
every node needs attnviz, the model and any weights file at the same paths.

For a Ray Data pipeline of your own, ``AttnvizBatchMapper`` is the callable class to give
to ``map_batches``: it takes columns ``path`` (the input file) and ``relative`` (where its
outputs go under ``out``, suffix replaced) and returns one JSON manifest record per input
in a column ``record``; an input that cannot be read or drawn gets a record with an
``error`` instead of failing the job::

    import json
    from pathlib import Path

    import ray.data
    from attnviz.integrations.ray_data import AttnvizBatchMapper
    from attnviz.io import ManifestWriter
    from attnviz.engine.options import RunOptions

    # Absolute paths: Ray may start the actors in another folder (under `uv run`, a copy).
    options = RunOptions(inputs=[], out=Path("maps").absolute())  # inputs: the rows below
    photos = sorted(Path("photos").absolute().glob("*.jpg"))
    # or ray.data.read_csv / read_parquet of a table with the columns path and relative
    dataset = ray.data.from_items(
        [{"path": str(p), "relative": p.name} for p in photos]
    ).map_batches(
        AttnvizBatchMapper,
        fn_constructor_kwargs={"options": options},
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=2),  # two actors, one model each
        batch_format="numpy",
    )
    options.out.mkdir(parents=True, exist_ok=True)
    with ManifestWriter(options.out) as manifest:
        for row in dataset.iter_rows():
            manifest.add(json.loads(row["record"]))
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from attnviz.engine.options import RunOptions, check_options, parse_norm
from attnviz.engine.outputs import write_outputs, write_stats_csv
from attnviz.engine.plan import (
    Progress,
    Report,
    RunSummary,
    Todo,
    is_video_input,
    keep_unreached,
    output_settings,
    plan,
)
from attnviz.engine.runner import (
    BatchRunner,
    ImageResult,
    decode_input,
    forward_threads,
    make_runner,
    torch_threads,
)
from attnviz.engine.stopping import GracefulStop
from attnviz.errors import AttnvizError, OutputError, UsageError
from attnviz.integrations import MissingExtraError
from attnviz.io import Decoded, InputItem, ManifestWriter, check_writable, discover
from attnviz.io.files import remove_stale_temps
from attnviz.io.manifest import MANIFEST_NAME, remove_stale_journals
from attnviz.io.resume import PreviousRun, input_fingerprint, settings_key
from attnviz.models import load_model
from attnviz.models.user import is_user_model

try:
    import ray
    import ray.data
except ImportError as exc:
    raise MissingExtraError("Ray Data", "ray") from exc

__all__ = ["AttnvizBatchMapper", "check_ray_options", "run_on_ray"]

# Recorded for a video found among the inputs: frames need one process to keep their order.
VIDEO_REASON = "videos are not processed on Ray; run `attnviz run` on them"

Record = dict[str, Any]


def check_ray_options(options: RunOptions) -> None:
    """``check_options``, plus the options that cannot work when Ray spreads the inputs."""
    check_options(options)
    if parse_norm(options.norm)[0] == "global":
        # One range over every input needs a first pass over all of them before any figure.
        raise UsageError("norm 'global' is not available on Ray; use 'image' or 'fixed:LO,HI'")
    if options.as_video:
        raise UsageError(f"as_video is not available on Ray: {VIDEO_REASON}")
    if options.shard is not None:
        raise UsageError("shard is not available on Ray: Ray itself spreads the inputs")
    if options.strict:
        # Other actors keep writing after one input fails: "nothing after a failure" cannot hold.
        raise UsageError("strict is not available on Ray: run `attnviz run --strict`")


class AttnvizBatchMapper:
    """The callable class for ``Dataset.map_batches``: one model per Ray actor.

    Each batch holds the columns ``path`` and ``relative`` (text, or bytes from
    ``os.fsencode`` for names that are not UTF-8); the result holds ``record``: one JSON
    manifest record per input, in the batch's order. ``settings`` is the key the driver
    planned with (see ``run_on_ray``); by default this actor's own.

    A full or read-only output folder stops the job (every later write would fail too);
    with ``report_output_errors`` it comes back instead as a record with ``"fatal": true``,
    because Ray hands the driver only the text of an actor's exception, not its type.
    """

    def __init__(
        self,
        options: RunOptions,
        settings: str | None = None,
        report_output_errors: bool = False,
    ) -> None:
        check_ray_options(options)
        self.options = options
        self.report_output_errors = report_output_errors
        model = load_model(
            options.model,
            options.weights,
            actor_device(options.device),
            size=options.size,
            random_init=options.random_init,
        )
        self.runner: BatchRunner = make_runner(
            model, options.method, options.layer, "gradcam" in options.panels,
            parts=options.parts, query=options.query,
        )  # fmt: skip
        self.settings = settings or settings_key(output_settings(options))
        # Neither the network nor the figure needs more pixels (see decode_image).
        self.min_side = max(options.panel_height, model.size)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = batch_items(batch)
        records: list[Record] = [{} for _ in items]
        ready: list[tuple[int, InputItem, Record, Decoded]] = []
        for index, item in enumerate(items):
            outcome = self._read(item)
            if isinstance(outcome, str):
                records[index] = {"input": str(item.path), "error": outcome}
            else:
                ready.append((index, item, *outcome))
        # The same torch threads as `attnviz run`: their count can change the arithmetic.
        with torch_threads(forward_threads()):
            results = (
                self.runner.run([d.rgb for *_, d in ready], [d.original_hw for *_, d in ready])
                if ready
                else []
            )
        for (index, item, fingerprint, decoded), result in zip(ready, results, strict=True):
            records[index] = self._write(item, fingerprint, decoded, result)
        # JSON text: Arrow takes it whatever the record holds; ASCII keeps odd names intact.
        lines = [json.dumps(r, ensure_ascii=True) for r in records]
        return {"record": np.array(lines, dtype=object)}

    def _read(self, item: InputItem) -> tuple[Record, Decoded] | str:
        """(fingerprint, decoded photo), or why the input cannot be read."""
        try:
            # Taken before decoding: a file rewritten meanwhile is redone next time.
            fingerprint = input_fingerprint(item.path)
            return fingerprint, decode_input(item, self.options, self.min_side)
        except OSError as exc:
            return exc.strerror or str(exc)
        except AttnvizError as exc:
            return str(exc)

    def _write(
        self, item: InputItem, fingerprint: Record, decoded: Decoded, result: ImageResult
    ) -> Record:
        """Render and atomically write one input's outputs; its manifest record."""
        try:
            record = write_outputs(item, decoded, result, self.options)
        except OutputError as exc:
            if not self.report_output_errors:
                raise
            return {"input": str(item.path), "error": str(exc), "fatal": True}
        except AttnvizError as exc:
            return {"input": str(item.path), "error": str(exc)}
        except (ValueError, MemoryError, cv2.error) as exc:  # an image too odd to render
            reason = f"cannot render ({type(exc).__name__}: {exc})"
            return {"input": str(item.path), "error": reason}
        record.update(input_stat=fingerprint, settings=self.settings)
        if decoded.notes:
            record["notes"] = list(decoded.notes)
        return record


def actor_device(requested: str) -> str:
    """``auto`` is the GPU Ray gave this actor, else the CPU; other names are kept.

    Not torch's own ``auto``: an actor without a GPU share must leave the node's GPUs to
    the actors that hold them.
    """
    if requested != "auto":
        return requested
    # Ray shows an actor only its own GPUs (CUDA_VISIBLE_DEVICES): its first is "cuda".
    return "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"


def batch_items(batch: Mapping[str, Iterable[object]]) -> list[InputItem]:
    """The inputs of a batch with the columns ``path`` and ``relative``."""
    missing = [c for c in ("path", "relative") if c not in batch]
    if missing:
        raise UsageError(
            f"AttnvizBatchMapper needs the columns 'path' and 'relative'; the batch has "
            f"{', '.join(map(repr, batch)) or 'none'}"
        )
    return [
        InputItem(Path(_text(path)), Path(_text(relative)))
        for path, relative in zip(batch["path"], batch["relative"], strict=True)
    ]


def _text(value: object) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else str(value)


def run_on_ray(
    options: RunOptions,
    *,
    concurrency: int = 1,
    batch_size: int | None = None,
    num_gpus: float = 0,
    progress: Progress = lambda _done, _total: None,
) -> RunSummary:
    """``attnviz run`` with Ray Data: ``concurrency`` actors, each with one model.

    Ray hands an actor ``batch_size`` inputs at a time (default ``options.batch_size``;
    the figures do not depend on it); ``num_gpus`` is each actor's GPU share. The driver
    (this process) plans the run against the output folder's manifest, exactly as
    ``attnviz run`` does, and writes each record to the manifest as it comes back, so
    memory stays flat however many inputs; records come in the order the actors finish.
    Not available here: ``norm="global"``, ``as_video``, ``shard`` and ``strict`` (a
    usage error); videos among the inputs are reported as failed.
    """
    start = time.perf_counter()
    _check_driver_options(options, concurrency, batch_size, num_gpus)
    check_writable(options.out)
    summary = RunSummary(out=options.out)
    map_names = _map_names(options)
    previous, unusable = PreviousRun.load(options.out, MANIFEST_NAME)
    items, rejected = discover(list(options.inputs), options.glob, exclude=options.out)
    settings = output_settings(options)
    # Frame sampling shapes videos only (as in attnviz run): plan wants both keys.
    keys = (
        settings_key(settings),
        settings_key({**settings, "every": options.every, "gif": options.gif}),
    )
    todo: Todo = []
    with GracefulStop() as stop, ManifestWriter(options.out, MANIFEST_NAME) as manifest:
        report = Report(summary, manifest, strict=False)
        try:
            if unusable:
                report.note(options.out, unusable)
            for r in rejected:
                report.failed(r.path, r.reason) if r.failed else report.note(r.path, r.reason)
            todo = plan(items, options, map_names, previous, keys, report)
            photos = [item for item, _ in todo if not is_video_input(item)]
            for item, _ in todo:
                if is_video_input(item):
                    report.failed(item.path, VIDEO_REASON)
            mapped = _mapped(photos, options, keys[0], concurrency, batch_size, num_gpus)
            _collect(mapped, photos, options.model, report, stop, progress)
        finally:
            keep_unreached(todo, previous, report)
    # Only now that the manifest holds their records may killed runs' journals go.
    remove_stale_temps(options.out)
    remove_stale_journals(options.out, MANIFEST_NAME)
    _finish(options, report)
    summary.stopped_by_signal(stop.signum)
    summary.wall_s = time.perf_counter() - start
    return summary


def _check_driver_options(
    options: RunOptions, concurrency: int, batch_size: int | None, num_gpus: float
) -> None:
    check_ray_options(options)
    if concurrency < 1:
        raise UsageError(f"concurrency must be at least 1, got {concurrency}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if num_gpus < 0:
        raise UsageError(f"num_gpus must be at least 0, got {num_gpus}")
    if options.device.startswith("cuda") and num_gpus == 0:
        # Ray hides the GPUs from an actor that asked for none.
        raise UsageError(f"device {options.device!r} needs num_gpus > 0 for Ray's actors")


def _map_names(options: RunOptions) -> list[str]:
    """Load the model once here, on the CPU: a bad model, layer or weights file is a usage
    error before any actor starts, and the plan needs the names of the maps."""
    model = load_model(
        options.model, options.weights, "cpu", size=options.size, random_init=options.random_init
    )
    runner = make_runner(
        model, options.method, options.layer, "gradcam" in options.panels, query=options.query
    )
    return runner.map_names


def _mapped(
    photos: Sequence[InputItem],
    options: RunOptions,
    settings: str,
    concurrency: int,
    batch_size: int | None,
    num_gpus: float,
) -> ray.data.Dataset | None:
    """The lazy Ray Data pipeline over ``photos``; None when there is nothing to do."""
    if not photos:
        return None
    # Actors may run in another folder than this process (Ray's working_dir, which `uv run`
    # sets to a copy of this one): every path they are given is absolute, so their figures
    # land where this process's manifest says they are.
    # Bytes, not text: a file name that is not UTF-8 still reaches the actor intact.
    rows = [
        {"path": os.fsencode(i.path.absolute()), "relative": os.fsencode(i.relative)}
        for i in photos
    ]
    weights = None if options.weights is None else options.weights.absolute()
    shipped = replace(
        options, out=options.out.absolute(), weights=weights, model=_absolute_model(options.model)
    )
    size = batch_size or options.batch_size
    # An actor with no batch to take would only load a model for nothing.
    actors = min(concurrency, -(-len(photos) // size))
    return ray.data.from_items(rows).map_batches(
        AttnvizBatchMapper,
        fn_constructor_kwargs={
            "options": shipped,
            "settings": settings,
            "report_output_errors": True,
        },
        batch_size=size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=num_gpus,
        batch_format="numpy",
    )


def _absolute_model(model: str) -> str:
    """``file.py:factory`` with the file made absolute, for actors in another folder (a
    ``package.module:factory`` is found on their own import path)."""
    source, _, factory = model.rpartition(":")
    if is_user_model(model) and source.endswith(".py"):
        return f"{Path(source).absolute()}:{factory}"
    return model


def _collect(
    mapped: ray.data.Dataset | None,
    photos: Sequence[InputItem],
    model: str,
    report: Report,
    stop: GracefulStop,
    progress: Progress,
) -> None:
    """Write each record to the manifest as its row streams back to the driver."""
    if mapped is None:
        return
    # The actors were given absolute paths (see _mapped); the manifest keeps the user's,
    # as attnviz run writes them.
    by_input = {str(item.path.absolute()): item for item in photos}
    for done, row in enumerate(mapped.iter_rows(), start=1):
        _settle({**json.loads(row["record"]), "model": model}, by_input, report)
        progress(done, len(photos))
        if stop.requested:
            break  # outputs written but not yet back are redone by the next run


def _settle(record: Record, by_input: Mapping[str, InputItem], report: Report) -> None:
    item = by_input[str(Path(record["input"]).absolute())]
    record["input"] = str(item.path)
    if record.get("fatal"):
        # As in attnviz run: the disk is full or read-only, so the run stops here.
        raise OutputError(str(record["error"]))
    if "error" in record:
        report.failed(item.path, str(record["error"]))
        return
    for text in record.get("notes", []):
        report.note(item.path, text)
    report.processed(item, record)


def _finish(options: RunOptions, report: Report) -> None:
    """The statistics table and the gallery, as ``attnviz run`` writes them."""
    if options.stats is not None:
        write_stats_csv(options.stats, report.results)
    if options.gallery:
        from attnviz.render.gallery import write_gallery

        write_gallery(options.out)
