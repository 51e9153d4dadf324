"""The run for one video input: frames -> batches -> model + hooks -> triptychs -> video.

The pipeline calls process_video() once per video (a video file, or a folder of frames
with --as-video); frame reading and video writing live in attnviz.io.video.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from attnviz.engine.figures import map_stats, render_figure
from attnviz.engine.options import RunOptions
from attnviz.engine.stopping import GracefulStop
from attnviz.errors import AttnvizError, OutputError
from attnviz.io.inputs import InputItem, output_path
from attnviz.io.video import DEFAULT_FPS, GifWriter, VideoWriter, open_frames
from attnviz.render.triptych import Range

if TYPE_CHECKING:
    from attnviz.engine.runner import BatchRunner, ImageResult

# Map statistics summarised over a video's frames: averaged, except the peak.
_AVERAGED_STATS = ("mean", "std", "entropy", "mass_top10")


class VideoStopped(Exception):
    """A stop was requested mid-video: its partial outputs are gone, record nothing for it.

    Not an AttnvizError on purpose: the input did not fail, the run was asked to end.
    """


def _batches(
    frames: Iterable[tuple[int, np.ndarray | None]], size: int
) -> Iterator[list[tuple[int, np.ndarray | None]]]:
    it = iter(frames)
    while batch := list(islice(it, size)):
        yield batch


def _number(value: object) -> float:
    assert isinstance(value, float | int), value
    return float(value)


class _Tally:
    """Running totals of a video's frames and maps, for its manifest record."""

    def __init__(self) -> None:
        self.read = 0  # source frames done (drawn or skipped), corrupt ones included
        self.corrupt = 0
        self.image_size: list[int] | None = None
        self.layers: list[str] = []
        self.top1: Counter[str] = Counter()
        self.sums: dict[str, dict[str, float]] = {}
        self.peaks: dict[str, float] = {}
        self.lows: dict[str, float] = {}

    def add(self, frame: np.ndarray, result: ImageResult) -> None:
        if self.image_size is None:
            self.image_size = [int(frame.shape[1]), int(frame.shape[0])]
            self.layers = [m.name for m in result.layers]
        if result.top5:
            self.top1[str(result.top5[0]["label"])] += 1
        for m in result.layers:
            stats = map_stats(m.weights, frame.shape[:2])
            sums = self.sums.setdefault(m.name, dict.fromkeys(_AVERAGED_STATS, 0.0))
            for key in _AVERAGED_STATS:
                sums[key] += _number(stats[key])
            self.peaks[m.name] = max(self.peaks.get(m.name, -math.inf), _number(stats["max"]))
            self.lows[m.name] = min(self.lows.get(m.name, math.inf), _number(stats["min"]))

    def maps(self, frames: int) -> dict[str, dict[str, float]]:
        """Per layer: each statistic's mean over the frames, the lowest low, the highest peak."""
        return {
            name: {
                **{k: v / frames for k, v in sums.items()},
                "min": self.lows[name],
                "max": self.peaks[name],
            }
            for name, sums in self.sums.items()
        }


def process_video(
    item: InputItem,
    opts: RunOptions,
    runner: BatchRunner,
    stop: GracefulStop,
    on_frames: Callable[[int], None],
    ranges: Mapping[str, Range] | None = None,
) -> tuple[dict[str, object], list[str]]:
    """Write the triptych video (and with opts.gif a short GIF) of one video input.

    Returns its manifest record and notes for the user. Frames that cannot be decoded are
    skipped and counted. Raises AttnvizError when the input is not a readable video or no
    frame decodes (nothing is written then), VideoStopped when `stop` was requested before
    the last batch (the partial video is removed). `on_frames` hears the number of source
    frames handled so far after each batch, for a progress bar. ``ranges`` fix the heat
    maps' colour ranges (``--norm``), as for photos.
    """
    video_path = output_path(item, opts.out, ".mp4")
    notes: list[str] = []
    tally = _Tally()
    with open_frames(item.path, opts.max_pixels) as source:
        out_fps = source.fps / opts.every
        gif = GifWriter(output_path(item, opts.out, ".gif"), out_fps) if opts.gif else None
        with VideoWriter(video_path, out_fps) as writer:
            _run_frames(
                source.frames(opts.every), opts, runner, stop, writer, gif, tally, on_frames,
                ranges,
            )  # fmt: skip
            if writer.frames == 0:
                raise AttnvizError(f"{item.path}: no frame of the video could be decoded")
        if source.fps_assumed:
            notes.append(f"no usable frame rate in the file: assumed {DEFAULT_FPS:g} fps")
    outputs = {"video": writer.path.relative_to(opts.out).as_posix()}
    if writer.note:
        notes.append(writer.note)
    if tally.corrupt:
        notes.append(f"{tally.corrupt} corrupt frame{'s' * (tally.corrupt > 1)} skipped")
    if gif is not None:
        try:
            gif.save()
            outputs["gif"] = gif.path.relative_to(opts.out).as_posix()
        except OutputError:
            raise
        except AttnvizError as exc:  # the video is written and stays valid without it
            notes.append(f"GIF not written: {exc}")
        if gif.note:
            notes.append(gif.note)
    record: dict[str, object] = {
        "input": str(item.path),
        "outputs": outputs,
        "model": opts.model,
        "image_size": tally.image_size,
        "layers": tally.layers,
        "frames": {
            "read": tally.read,
            "written": writer.frames,
            "skipped_corrupt": tally.corrupt,
            "fps": source.fps,
            "every": opts.every,
            "video_fps": out_fps,
        },
        "top1": [{"label": k, "frames": n} for k, n in tally.top1.most_common(5)],
        "maps": tally.maps(writer.frames),
    }
    return record, notes


def _run_frames(
    frames: Iterable[tuple[int, np.ndarray | None]],
    opts: RunOptions,
    runner: BatchRunner,
    stop: GracefulStop,
    writer: VideoWriter,
    gif: GifWriter | None,
    tally: _Tally,
    on_frames: Callable[[int], None],
    ranges: Mapping[str, Range] | None,
) -> None:
    """Forward passes here; each batch is drawn and encoded on a worker thread meanwhile.

    Drawing and encoding cost about a fifth of a CPU forward pass and release the GIL, so
    they overlap the next batch's forward pass. One worker keeps the frames in order, and
    at most one batch waits for it, so memory stays bounded whatever the video's length.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="attnviz-video") as pool:
        drawing: Future[None] | None = None
        taken = 0  # source frames handed to the worker, corrupt ones included
        for batch in _batches(frames, opts.batch_size):
            if stop.requested:
                raise VideoStopped(f"stopped after {tally.read} frames")
            images = [frame for _, frame in batch if frame is not None]
            tally.corrupt += len(batch) - len(images)
            results = runner.run(images) if images else []
            if drawing is not None:
                drawing.result()
                tally.read = taken
                on_frames(tally.read)
            drawing = pool.submit(_draw, images, results, opts, writer, gif, tally, ranges)
            taken += len(batch)
        if drawing is not None:
            drawing.result()
            tally.read = taken
            on_frames(tally.read)


def _draw(
    images: list[np.ndarray],
    results: list[ImageResult],
    opts: RunOptions,
    writer: VideoWriter,
    gif: GifWriter | None,
    tally: _Tally,
    ranges: Mapping[str, Range] | None,
) -> None:
    """Render, encode and tally one batch (on the worker thread)."""
    for frame, result in zip(images, results, strict=True):
        figure = render_figure(frame, result, opts, ranges)
        writer.write(figure)
        if gif is not None:
            gif.add(figure)
        tally.add(frame, result)
