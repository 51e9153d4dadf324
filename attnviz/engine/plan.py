"""What a run will do: the inputs still to process, the settings that key their outputs,
and the report that takes each result to the summary and the manifest together."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attnviz
from attnviz.engine.figures import output_suffixes
from attnviz.engine.options import RunOptions
from attnviz.errors import AttnvizError
from attnviz.io import InputItem, ManifestWriter
from attnviz.io.resume import PreviousRun, input_fingerprint
from attnviz.io.video import is_video
from attnviz.models.user import is_user_model
from attnviz.render.triptych import FIGURE_VERSION

# Called after each input with (inputs done, inputs total).
Progress = Callable[[int, int], None]


@dataclass
class RunSummary:
    """What a run did: its counts, each failure and note as (input, text), what stopped it early
    if anything did, and its wall time in seconds."""

    out: Path
    processed: int = 0
    skipped: int = 0  # up to date from an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    stopped_by: str | None = None  # "--strict", or the signal's name
    signum: int | None = None
    wall_s: float = 0.0

    def stopped_by_signal(self, signum: int | None) -> None:
        """Record the signal that stopped the run, if one did (GracefulStop.signum)."""
        if signum is not None:
            self.signum, self.stopped_by = signum, signal.Signals(signum).name


class StrictStop(Exception):
    """--strict and an input failed: the run stops (Report.failed raises it, run catches it)."""


def output_settings(opts: RunOptions) -> dict[str, object]:
    """Everything that shapes an output file: a change to any of these redoes it."""
    model_file = opts.model.rpartition(":")[0] if is_user_model(opts.model) else None
    return {
        "attnviz": attnviz.__version__,
        "figure": FIGURE_VERSION,  # how figures are drawn: earlier ones are redrawn
        "model": opts.model,
        "model_file": _file_identity(model_file),
        "weights": _file_identity(opts.weights),
        "random_init": opts.random_init,
        "layer": opts.layer,
        "method": opts.method,
        "cmap": opts.cmap,
        "alpha": opts.alpha,
        "size": opts.size,
        "format": opts.fmt,
        "save_raw": opts.save_raw,
        "panel_height": opts.panel_height,
        "panels": list(opts.panels),
        "layout": opts.layout,
        "norm": opts.norm,
        "parts": opts.parts,
        "query": list(opts.query) if opts.query is not None else None,
    }


def _file_identity(path: Path | str | None) -> list[object] | None:
    if path is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


class Report:
    """Results, failures and notes go to the summary and the manifest together."""

    def __init__(self, summary: RunSummary, manifest: ManifestWriter, strict: bool) -> None:
        self.summary, self.manifest, self.strict = summary, manifest, strict
        self.recorded: set[str] = set()  # inputs this run has written a record for
        self.results: list[dict[str, Any]] = []  # records of this run's inputs, done or kept

    def processed(self, item: InputItem, record: dict[str, Any]) -> None:
        self.manifest.add(record)
        self.recorded.add(str(item.path))
        self.results.append(record)
        self.summary.processed += 1

    def kept(self, item: InputItem, record: dict[str, Any]) -> None:
        self.manifest.add(record)
        self.recorded.add(str(item.path))
        self.results.append(record)
        self.summary.skipped += 1

    def failed(self, path: Path | str, reason: str) -> None:
        self.summary.failed.append((str(path), reason))
        self.manifest.add({"input": str(path), "error": reason})
        self.recorded.add(str(path))
        if self.strict:
            raise StrictStop

    def note(self, path: Path | str, text: str) -> None:
        self.summary.notes.append((str(path), text))


Todo = list[tuple[InputItem, dict[str, Any]]]


def keep_unreached(todo: Todo, previous: PreviousRun, report: Report) -> None:
    """Inputs a stopped run never reached keep their earlier record: it is still true."""
    with contextlib.suppress(AttnvizError):  # the disk may be what stopped the run
        for item, fingerprint in todo:
            if str(item.path) not in report.recorded:
                record = previous.still_present(fingerprint["path"])
                if record is not None:
                    report.manifest.add(record)


def plan(
    items: Sequence[InputItem],
    opts: RunOptions,
    layers: Sequence[str],
    previous: PreviousRun,
    keys: tuple[str, str],
    report: Report,
) -> Todo:
    """The inputs to process; up-to-date ones keep their earlier record and are skipped.

    ``keys``: the settings digests of photos and of videos.
    """
    todo: Todo = []
    sources: set[str] = set()
    for item in items:
        try:
            fingerprint = input_fingerprint(item.path)
        except OSError as exc:
            report.failed(item.path, exc.strerror or str(exc))
            continue
        sources.add(fingerprint["path"])
        key = keys[1] if is_video_input(item) else keys[0]
        kept = None if opts.overwrite else previous.up_to_date(fingerprint, key)
        if kept is not None:
            report.kept(item, kept)
        else:
            todo.append((item, fingerprint))
    # Earlier results for other inputs stay listed, unless this run writes over them.
    suffixes = list(output_suffixes(opts, layers).values())
    targets = {
        item.relative.with_suffix(suffix).as_posix()
        for item, _ in todo
        for suffix in (VIDEO_OUTPUT_SUFFIXES if is_video_input(item) else suffixes)
    }
    for record in previous.others(sources):
        if not targets.intersection(record["outputs"].values()):
            report.manifest.add(record)
    return todo


# A video's outputs: the video (MJPG .avi where mp4 cannot be written) and the GIF.
VIDEO_OUTPUT_SUFFIXES = (".mp4", ".avi", ".gif")


def is_video_input(item: InputItem) -> bool:
    """A video file, or a folder of frames (``--as-video``)."""
    return is_video(item.path) or item.path.is_dir()
