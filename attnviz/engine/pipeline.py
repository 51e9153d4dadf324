"""``attnviz run`` over photos and videos: plan -> decode -> forward + hooks -> outputs.

``run`` puts the engine's steps in order (``plan``, ``runner``, ``outputs``, ``video``) and
overlaps them: decoding and writing run on worker threads around the forward passes.
Ray Data (``integrations.ray_data``) orders the same steps its own way.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from attnviz.engine.figures import heat_maps
from attnviz.engine.options import RunOptions, check_options, parse_norm
from attnviz.engine.outputs import flat_map_note, write_outputs, write_stats_csv
from attnviz.engine.plan import (
    Progress,
    Report,
    RunSummary,
    StrictStop,
    Todo,
    is_video_input,
    keep_unreached,
    output_settings,
    plan,
)
from attnviz.engine.runner import (
    BatchRunner,
    decode_input,
    forward_threads,
    io_workers,
    make_runner,
    torch_threads,
)
from attnviz.engine.stopping import GracefulStop
from attnviz.engine.video import VideoStopped, process_video
from attnviz.errors import AttnvizError, OutputError
from attnviz.io import (
    Decoded,
    InputItem,
    ManifestWriter,
    check_writable,
    discover,
    remove_stale_temps,
)
from attnviz.io.manifest import MANIFEST_NAME, remove_stale_journals
from attnviz.io.resume import PreviousRun, settings_key
from attnviz.io.shards import Shard
from attnviz.io.video import expected_frames, open_frames
from attnviz.models import load_model
from attnviz.render.triptych import Range

# Called while a video is processed: (its path, frames done, frames expected or None).
FrameProgress = Callable[[str, int, "int | None"], None]


def run(
    opts: RunOptions,
    progress: Progress = lambda _done, _total: None,
    frame_progress: FrameProgress = lambda _name, _done, _total: None,
) -> RunSummary:
    """Process every input of ``opts``; see docs/reliability.md for the guarantees on failures.

    ``progress`` hears (inputs done, inputs total) after each input; ``frame_progress``
    hears (video, frames done, frames expected or None) while a video is processed.
    """
    start = time.perf_counter()
    check_options(opts)
    check_writable(opts.out)
    summary = RunSummary(out=opts.out)
    with GracefulStop() as stop:
        # A bad model, layer or weights file is a usage error before the manifest is touched.
        model = load_model(
            opts.model, opts.weights, opts.device, size=opts.size, random_init=opts.random_init
        )
        runner = make_runner(
            model, opts.method, opts.layer, "gradcam" in opts.panels,
            parts=opts.parts, query=opts.query,
        )  # fmt: skip
        shard = Shard.parse(opts.shard) if opts.shard is not None else None
        manifest_name = shard.manifest_name if shard is not None else MANIFEST_NAME
        previous, unusable = PreviousRun.load(opts.out, manifest_name)
        items, rejected = discover(
            list(opts.inputs), opts.glob, exclude=opts.out, as_video=opts.as_video
        )
        if shard is not None:
            items = [i for i in items if shard.holds(i.relative.as_posix())]
            rejected = [r for r in rejected if shard.holds(str(r.path))]
        settings = output_settings(opts)
        ranges: dict[str, Range] = {}  # --norm fixed is applied per figure (norm_ranges)
        if parse_norm(opts.norm)[0] == "global" and not stop.requested:
            # One range per map over every input, so the same value gets the same colour in
            # every figure; it is part of the settings, so new inputs redo the others.
            ranges = global_ranges(items, runner, opts, stop, progress)
            settings["ranges"] = {name: list(r) for name, r in sorted(ranges.items())}
        # Frame sampling shapes videos only: changing it must not redo every photo.
        video_settings = {**settings, "every": opts.every, "gif": opts.gif}
        keys = (settings_key(settings), settings_key(video_settings))
        todo: Todo = []
        with ManifestWriter(opts.out, manifest_name) as manifest:
            report = Report(summary, manifest, opts.strict)
            try:
                if unusable:
                    report.note(opts.out, unusable)
                for r in rejected:
                    report.failed(r.path, r.reason) if r.failed else report.note(r.path, r.reason)
                todo = plan(items, opts, runner.map_names, previous, keys, report)
                photos = [(i, f) for i, f in todo if not is_video_input(i)]
                videos = [(i, f) for i, f in todo if is_video_input(i)]
                if not stop.requested:  # a stop during --norm global's first pass
                    _process(photos, runner, opts, ranges, keys[0], report, stop, progress)
                if videos and not stop.requested:
                    _process_videos(videos, runner, opts, ranges, keys[1], report, stop,
                                    frame_progress)  # fmt: skip
            except StrictStop:
                summary.stopped_by = "--strict"
            finally:
                keep_unreached(todo, previous, report)
                if runner.oom_note:
                    report.note("(run)", runner.oom_note)
        # Only now that this run's manifest holds their records may killed runs' journals go.
        remove_stale_temps(opts.out)
        remove_stale_journals(opts.out, manifest_name)
        if opts.stats is not None:
            # Each shard's job writes its own rows, so parallel jobs never overwrite each other.
            stats = shard.file_for(opts.stats) if shard is not None else opts.stats
            write_stats_csv(stats, report.results)
        if opts.gallery and shard is not None:
            summary.notes.append(
                (str(opts.out), "no gallery for one shard: `attnviz merge` the shards, then "
                 "`attnviz gallery`")
            )  # fmt: skip
        elif opts.gallery:
            from attnviz.render.gallery import write_gallery

            write_gallery(opts.out)
        summary.stopped_by_signal(stop.signum)
    summary.wall_s = time.perf_counter() - start
    return summary


_Pending = deque[tuple[InputItem, dict[str, Any], list[str], "Future[dict[str, object]]"]]


def _process(
    todo: Todo,
    runner: BatchRunner,
    opts: RunOptions,
    ranges: Mapping[str, Range],
    key: str,
    report: Report,
    stop: GracefulStop,
    progress: Progress,
) -> None:
    """Forward passes here; decoding, rendering and writing on worker threads around them.

    OpenCV, Pillow and zlib release the GIL, so the workers' image work overlaps the
    forward pass. Every input, decoded or not, settles in input order, and at most one
    batch of writes is in flight, so memory stays bounded and outputs do not depend on
    timing. Whatever stops the run, every file a worker wrote is recorded before it ends.
    """
    summary = report.summary
    failed_before, total = len(summary.failed), len(todo)
    progress(0, total)  # the model is loaded and the work known: the bar can start
    pending: _Pending = deque()
    # --strict settles every input before the next: nothing is written after a failure.
    in_flight = 0 if opts.strict else opts.batch_size

    def settle(limit: int) -> None:
        while len(pending) > limit:
            item, fingerprint, notes, future = pending.popleft()
            try:
                record = future.result()
            except OutputError:
                raise  # the disk is full or read-only: every later write would fail too
            except AttnvizError as exc:
                report.failed(item.path, str(exc))
            except (ValueError, MemoryError, cv2.error) as exc:  # an image too odd to render
                report.failed(item.path, f"cannot render ({type(exc).__name__}: {exc})")
            else:
                record.update(input_stat=fingerprint, settings=key)
                for text in notes:
                    report.note(item.path, text)
                if notes:
                    record["notes"] = notes
                report.processed(item, record)
            # Inputs that failed to decode count as done too.
            progress(summary.processed + len(summary.failed) - failed_before, total)

    def add(entry: tuple[InputItem, dict[str, Any], list[str], Future[dict[str, object]]]) -> None:
        pending.append(entry)
        settle(in_flight)

    # A flat map is noted once per run, on the first photo it shows on (Grad-CAM is no gate).
    flat_noted = opts.method != "attention"
    pool = ThreadPoolExecutor(opts.workers or io_workers(), thread_name_prefix="attnviz-io")
    try:
        with torch_threads(forward_threads()):
            # Neither the network nor the figure needs more pixels than this: large JPEGs
            # decode at a reduced scale (see decode_image).
            min_side = max(opts.panel_height, runner.model.size)
            for chunk in _decode_ahead(todo, opts, pool, min_side):
                decoded: list[tuple[InputItem, dict[str, Any], Decoded]] = []
                for item, fingerprint, future in chunk:
                    exc = future.exception()
                    if exc is not None:
                        add((item, fingerprint, [], future))  # type: ignore[arg-type]
                    else:
                        decoded.append((item, fingerprint, future.result()))
                images = [d.rgb for _, _, d in decoded]
                sizes = [d.original_hw for _, _, d in decoded]
                for (item, fingerprint, d), result in zip(
                    decoded, runner.run(images, sizes) if images else [], strict=True
                ):
                    write = pool.submit(write_outputs, item, d, result, opts, ranges)
                    flat = None if flat_noted else flat_map_note(result)
                    flat_noted = flat_noted or flat is not None
                    add((item, fingerprint, d.notes + ([flat] if flat else []), write))
                if stop.requested:
                    break  # the files in flight are finished and recorded below
            settle(0)
    finally:
        # Whatever ended the run: start nothing new, wait for the files being written,
        # and record them, so the manifest never vouches for an output it does not describe.
        pool.shutdown(wait=True, cancel_futures=True)
        _record_finished(pending, settle)


def _process_videos(
    videos: Todo,
    runner: BatchRunner,
    opts: RunOptions,
    ranges: Mapping[str, Range],
    key: str,
    report: Report,
    stop: GracefulStop,
    frame_progress: FrameProgress,
) -> None:
    """One video after the other, each batched through the model like photos."""
    for item, fingerprint in videos:
        name, total = str(item.path), expected_frames(item.path, opts.every)
        frame_progress(name, 0, total)

        def frames_done(done: int, name: str = name, total: int | None = total) -> None:
            frame_progress(name, done, total)

        try:
            with torch_threads(forward_threads()):
                record, notes = process_video(item, opts, runner, stop, frames_done, ranges)
        except VideoStopped:
            return  # its partial outputs are gone; the input keeps any earlier record
        except OutputError:
            raise
        except AttnvizError as exc:
            report.failed(item.path, str(exc))
            continue
        except (ValueError, MemoryError, cv2.error) as exc:  # a frame too odd to render
            report.failed(item.path, f"cannot render ({type(exc).__name__}: {exc})")
            continue
        record.update(input_stat=fingerprint, settings=key)
        for text in notes:
            report.note(item.path, text)
        if notes:
            record["notes"] = notes
        report.processed(item, record)


def _record_finished(pending: _Pending, settle: Callable[[int], None]) -> None:
    """Record what the workers finished after the run stopped, without raising again."""
    while pending:
        if pending[0][3].cancelled():
            pending.popleft()
            continue
        with contextlib.suppress(AttnvizError, StrictStop):
            settle(len(pending) - 1)


def _decode_ahead(
    todo: Todo, opts: RunOptions, pool: ThreadPoolExecutor, min_side: int
) -> Iterator[list[tuple[InputItem, dict[str, Any], Future[Decoded]]]]:
    """Batches of inputs with their decoding under way; the next batch decodes meanwhile."""
    chunks = [todo[i : i + opts.batch_size] for i in range(0, len(todo), opts.batch_size)]

    def submit(chunk: Todo) -> list[tuple[InputItem, dict[str, Any], Future[Decoded]]]:
        return [(i, f, pool.submit(decode_input, i, opts, min_side)) for i, f in chunk]

    ahead = submit(chunks[0]) if chunks else []
    for index in range(len(chunks)):
        current = ahead
        ahead = submit(chunks[index + 1]) if index + 1 < len(chunks) else []
        yield current


def global_ranges(
    items: Sequence[InputItem],
    runner: BatchRunner,
    opts: RunOptions,
    stop: GracefulStop,
    progress: Progress,
) -> dict[str, Range]:
    """One (min, max) per heat map over every input: the first pass of ``--norm global``.

    Maps are scaled at their native resolution and bilinear upsampling never leaves the
    range of its samples, so this is exactly the range of the drawn maps. Inputs that fail
    to decode are left out here and reported by the second pass.
    """
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def widen(images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] | None = None) -> None:
        for result in runner.run(images, sizes) if images else []:
            for name, values in heat_maps(result).items():
                lo[name] = min(lo.get(name, math.inf), float(values.min()))
                hi[name] = max(hi.get(name, -math.inf), float(values.max()))

    photos = [i for i in items if not is_video_input(i)]
    min_side = max(opts.panel_height, runner.model.size)
    with (
        torch_threads(forward_threads()),
        ThreadPoolExecutor(opts.workers or io_workers(), thread_name_prefix="attnviz-io") as pool,
    ):
        for start in range(0, len(photos), opts.batch_size):
            if stop.requested:
                break
            chunk = photos[start : start + opts.batch_size]
            decoded = pool.map(_try_decode, chunk, [opts] * len(chunk), [min_side] * len(chunk))
            found = [d for d in decoded if d is not None]
            widen([d.rgb for d in found], [d.original_hw for d in found])
            progress(min(start + opts.batch_size, len(photos)), len(items))
        for item in (i for i in items if is_video_input(i)):
            # A video that cannot be read is reported by the second pass.
            with contextlib.suppress(AttnvizError), open_frames(item.path, opts.max_pixels) as src:
                batch: list[np.ndarray] = []
                for _, frame in src.frames(opts.every):
                    if stop.requested:
                        break
                    batch += [frame] if frame is not None else []
                    if len(batch) == opts.batch_size:
                        widen(batch)
                        batch = []
                widen(batch)
    return {name: (lo[name], hi[name]) for name in lo}


def _try_decode(item: InputItem, opts: RunOptions, min_side: int) -> Decoded | None:
    try:
        return decode_input(item, opts, min_side)
    except AttnvizError:
        return None
