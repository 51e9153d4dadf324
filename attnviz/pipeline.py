"""The run: inputs -> decode -> batch -> model + hooks -> render -> atomic write + manifest.

The only module that knows the order of the steps; each step lives in its own package.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import math
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

import attnviz
from attnviz.api import layer_maps
from attnviz.attention import capture_maps, reads_query, select_layers
from attnviz.attention.capture import user_selected
from attnviz.attention.protocol import query_points
from attnviz.errors import AttnvizError, OutputError, UsageError
from attnviz.figures import (
    compose_figure,
    heat_maps,
    map_stats,
    norm_ranges,
    output_suffixes,
    separate_panels,
)
from attnviz.gradcam import last_feature_layer, trunk_grad_cam, trunk_mode
from attnviz.io import (
    Decoded,
    InputItem,
    ManifestWriter,
    check_writable,
    decode_image,
    discover,
    output_path,
    remove_stale_temps,
    write_image,
    write_npz,
)
from attnviz.io.files import atomic_write_bytes
from attnviz.io.manifest import MANIFEST_NAME, remove_stale_journals
from attnviz.io.resume import PreviousRun, input_fingerprint, settings_key
from attnviz.io.shards import Shard
from attnviz.io.video import expected_frames, is_video, open_frames
from attnviz.models import LoadedModel, load_model
from attnviz.models.outputs import logits_of, not_class_scores, top_classes
from attnviz.models.user import is_user_model
from attnviz.options import RunOptions, check_options, parse_norm
from attnviz.render import LayerMaps
from attnviz.render.triptych import FIGURE_VERSION, Range
from attnviz.stopping import GracefulStop
from attnviz.video import VideoStopped, process_video


@dataclass
class RunSummary:
    out: Path
    processed: int = 0
    skipped: int = 0  # up to date from an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    stopped_by: str | None = None  # "--strict", or the signal's name
    signum: int | None = None
    wall_s: float = 0.0


# Called after each input with (inputs done, inputs total).
Progress = Callable[[int, int], None]
# Called while a video is processed: (its path, frames done, frames expected or None).
FrameProgress = Callable[[str, int, "int | None"], None]


class _StrictStop(Exception):
    """Internal: --strict and an input failed."""


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


class _Report:
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
            raise _StrictStop

    def note(self, path: Path | str, text: str) -> None:
        self.summary.notes.append((str(path), text))


_Todo = list[tuple[InputItem, dict[str, Any]]]


def run(
    opts: RunOptions,
    progress: Progress = lambda done, total: None,
    frame_progress: FrameProgress = lambda name, done, total: None,
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
        todo: _Todo = []
        with ManifestWriter(opts.out, manifest_name) as manifest:
            report = _Report(summary, manifest, opts.strict)
            try:
                if unusable:
                    report.note(opts.out, unusable)
                for r in rejected:
                    report.failed(r.path, r.reason) if r.failed else report.note(r.path, r.reason)
                todo = _plan(items, opts, runner.map_names, previous, keys, report)
                photos = [(i, f) for i, f in todo if not is_video_input(i)]
                videos = [(i, f) for i, f in todo if is_video_input(i)]
                if not stop.requested:  # a stop during --norm global's first pass
                    _process(photos, runner, opts, ranges, keys[0], report, stop, progress)
                if videos and not stop.requested:
                    _process_videos(videos, runner, opts, ranges, keys[1], report, stop,
                                    frame_progress)  # fmt: skip
            except _StrictStop:
                summary.stopped_by = "--strict"
            finally:
                _keep_unreached(todo, previous, report)
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
        if stop.requested:
            summary.signum = stop.signum
            summary.stopped_by = signal.Signals(stop.signum).name
    summary.wall_s = time.perf_counter() - start
    return summary


def _keep_unreached(todo: _Todo, previous: PreviousRun, report: _Report) -> None:
    """Inputs a stopped run never reached keep their earlier record: it is still true."""
    with contextlib.suppress(AttnvizError):  # the disk may be what stopped the run
        for item, fingerprint in todo:
            if str(item.path) not in report.recorded:
                record = previous.still_present(fingerprint["path"])
                if record is not None:
                    report.manifest.add(record)


def _plan(
    items: Sequence[InputItem],
    opts: RunOptions,
    layers: Sequence[str],
    previous: PreviousRun,
    keys: tuple[str, str],
    report: _Report,
) -> _Todo:
    """The inputs to process; up-to-date ones keep their earlier record and are skipped.

    ``keys``: the settings digests of photos and of videos.
    """
    todo: _Todo = []
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


_Pending = deque[tuple[InputItem, dict[str, Any], list[str], "Future[dict[str, object]]"]]


def _process(
    todo: _Todo,
    runner: BatchRunner,
    opts: RunOptions,
    ranges: Mapping[str, Range],
    key: str,
    report: _Report,
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
        with _torch_threads(forward_threads()):
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
                    write = pool.submit(_write_outputs, item, d, result, opts, ranges)
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


# Below this, a map's max - min on a photo is too small to see on panel 2's [0, 1] scale.
FLAT_RANGE = 0.05


def flat_map_note(result: ImageResult) -> str | None:
    """A note for the first layer whose map barely varies on a photo, so a flat panel 2 is
    not taken for a rendering bug (videos, whose frames go by in their own loop, get none)."""
    for layer in result.layers:
        span = float(layer.weights.max() - layer.weights.min())
        if span < FLAT_RANGE:
            return (
                f"{layer.name}: the gate barely varies on this photo (max - min {span:.3f} "
                "on panel 2's [0, 1] scale), so its map looks flat; noted once per run"
            )
    return None


# A video's outputs: the video (MJPG .avi where mp4 cannot be written) and the GIF.
VIDEO_OUTPUT_SUFFIXES = (".mp4", ".avi", ".gif")


def is_video_input(item: InputItem) -> bool:
    """A video file, or a folder of frames (``--as-video``)."""
    return is_video(item.path) or item.path.is_dir()


def _process_videos(
    videos: _Todo,
    runner: BatchRunner,
    opts: RunOptions,
    ranges: Mapping[str, Range],
    key: str,
    report: _Report,
    stop: GracefulStop,
    frame_progress: FrameProgress,
) -> None:
    """One video after the other, each batched through the model like photos."""

    for item, fingerprint in videos:
        name, total = str(item.path), expected_frames(item.path, opts.every)
        frame_progress(name, 0, total)
        try:
            with _torch_threads(forward_threads()):
                record, notes = process_video(
                    item, opts, runner, stop,
                    lambda done, name=name, total=total: frame_progress(name, done, total),
                    ranges,
                )  # fmt: skip
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
        with contextlib.suppress(AttnvizError, _StrictStop):
            settle(len(pending) - 1)


def _decode(item: InputItem, opts: RunOptions, min_side: int) -> Decoded:
    decoded = decode_image(item.path, opts.max_pixels, min_side)
    check_query(opts.query, decoded.original_hw)
    return decoded


def check_query(query: tuple[float, float] | None, image_hw: tuple[int, int]) -> None:
    """``--query`` must lie inside the photo: a point outside has no attention to show."""
    if query is None:
        return
    x, y = query
    h, w = image_hw
    if not (0 <= x < w and 0 <= y < h):
        raise AttnvizError(f"--query {x:g},{y:g} lies outside this {w}x{h} image")


def _decode_ahead(
    todo: _Todo, opts: RunOptions, pool: ThreadPoolExecutor, min_side: int
) -> Iterator[list[tuple[InputItem, dict[str, Any], Future[Decoded]]]]:
    """Batches of inputs with their decoding under way; the next batch decodes meanwhile."""
    chunks = [todo[i : i + opts.batch_size] for i in range(0, len(todo), opts.batch_size)]

    def submit(chunk: _Todo) -> list[tuple[InputItem, dict[str, Any], Future[Decoded]]]:
        return [(i, f, pool.submit(_decode, i, opts, min_side)) for i, f in chunk]

    ahead = submit(chunks[0]) if chunks else []
    for index in range(len(chunks)):
        current = ahead
        ahead = submit(chunks[index + 1]) if index + 1 < len(chunks) else []
        yield current


def forward_threads() -> int:
    """Torch's threads on the CPU: half the cores, the rest decode, render and write.

    Fixed by the machine, never by --workers or --batch-size, so that those cannot change
    the arithmetic (a different thread count may sum in a different order).
    """
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()  # the user chose
    return max(1, _usable_cores() // 2)


def io_workers() -> int:
    return max(1, _usable_cores() - forward_threads())


def _usable_cores() -> int:
    # The CPUs this process may run on (a container's or a job's share), not the host's.
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class ImageResult:
    """What the forward pass gives for one photo: its top-5 classes and each layer's maps."""

    top5: list[dict[str, object]]
    layers: list[LayerMaps]
    gradcam: np.ndarray | None = None  # the trunk's Grad-CAM, when a gradcam panel asks for it
    classes_note: str | None = None  # why top5 is empty: the output is not class scores


def _is_out_of_memory(exc: BaseException) -> bool:
    # CUDA raises its own type; MPS and older builds a RuntimeError with this message.
    text = str(exc)
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in text or "can't allocate memory" in text)  # CPU allocator
    )


class BatchRunner:
    """Forward passes with hooks; on out-of-memory, retries at half the batch down to one.

    With ``forward_batch``, the model always sees batches of exactly that many photos (the
    last one padded with blank images): kernels pick their algorithm, and so the order of
    their sums, by batch shape, so a fixed shape makes every photo's maps the same bytes
    whatever --batch-size and its place in the run. None: the batches as given.
    """

    def __init__(
        self,
        model: LoadedModel,
        layers: list[str],
        with_gradcam: bool = False,
        forward_batch: int | None = None,
        parts: bool = False,
        query: tuple[float, float] | None = None,
    ) -> None:
        self.model, self.layers, self.with_gradcam = model, layers, with_gradcam
        self.forward_batch = forward_batch
        self.parts = parts  # each layer's parts (heads, scales ...) as rows after it
        self.query = query  # (x, y) in the photos' own pixels, for point-read attention
        self.gradcam_layer: str | None = model.spec.gradcam_layer
        self.batch_limit: int | None = None  # lowered after an out-of-memory error
        self.oom_note: str | None = None

    @property
    def map_names(self) -> list[str]:
        """Names of the maps each result holds: its layers', then "gradcam" if computed."""
        return self.layers + (["gradcam"] if self.with_gradcam else [])

    def run(
        self, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[ImageResult]:
        """Results for ``images``; ``sizes`` are the photos' own (h, w) when they were decoded
        smaller (``--query`` is in their pixels), else the arrays' own."""
        sizes = list(sizes) if sizes is not None else [im.shape[:2] for im in images]
        return self._run(list(zip(images, sizes, strict=True)))

    def _run(self, photos: list[tuple[np.ndarray, tuple[int, int]]]) -> list[ImageResult]:
        limit = self.batch_limit or self.forward_batch or len(photos)
        results: list[ImageResult] = []
        for i in range(0, len(photos), limit):
            results += self._run_or_split(photos[i : i + limit])
        return results

    def _run_or_split(self, photos: list[tuple[np.ndarray, tuple[int, int]]]) -> list[ImageResult]:
        try:
            with query_points(self._query_points(photos)):
                return self._forward([image for image, _ in photos])
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if len(photos) == 1:
                raise AttnvizError(
                    "out of memory with a batch of one image; try a smaller --size or --device cpu"
                ) from None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = (len(photos) + 1) // 2
        self.batch_limit = half
        self.oom_note = f"out of memory: retried with smaller batches, down to {half}"
        # The second half goes through _run(): at the size the first half ended up needing.
        return self._run_or_split(photos[:half]) + self._run(photos[half:])

    def _query_points(self, photos: list[tuple[np.ndarray, tuple[int, int]]]) -> Tensor | None:
        """``--query`` as fractions of each photo's width and height, padded like the batch."""
        if self.query is None:
            return None
        for _, hw in photos:
            check_query(self.query, hw)  # frames of a video meet it here
        x, y = self.query
        points = [(x / w, y / h) for _, (h, w) in photos]
        size = max(len(points), self.batch_limit or self.forward_batch or 0)
        points += [(0.5, 0.5)] * (size - len(points))
        return torch.tensor(points, dtype=torch.float32, device=self.model.device)

    def _input(self, images: Sequence[np.ndarray]) -> Tensor:
        """The batch tensor, padded with zeros to the fixed forward shape (if any)."""
        x = self.model.preprocess(images)
        size = self.batch_limit or self.forward_batch
        if size is not None and len(x) < size:
            x = torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])
        return x

    def _forward(self, images: Sequence[np.ndarray]) -> list[ImageResult]:
        x = self._input(images)
        with torch.inference_mode(), capture_maps(self.model.net, self.layers) as captured:
            logits = logits_of(self.model(x))
            top5, note = top_classes(logits), not_class_scores(logits)
            missing = [name for name in self.layers if name not in captured]
            if missing:  # a discovered layer whose call did not match its probe's shapes
                raise AttnvizError(f"no map from {', '.join(missing)} in this forward pass")
            maps = {name: layer_maps(name, c, self.parts) for name, c in captured.items()}
        cams: list[np.ndarray | None] = [None] * len(images)
        if self.with_gradcam:
            found, _, self.gradcam_layer = trunk_grad_cam(self.model.net, x, self.gradcam_layer)
            cams = list(found.float().cpu().numpy())
        return [
            ImageResult(top5[i], [row for n in self.layers for row in maps[n][i]], cams[i], note)
            for i in range(len(images))
        ]


class GradCamRunner(BatchRunner):
    """Grad-CAM of the trunk for its predicted class, in place of the attention maps."""

    def __init__(
        self, model: LoadedModel, layer: str | None, forward_batch: int | None = None
    ) -> None:
        super().__init__(model, [], forward_batch=forward_batch)
        self.target = layer or model.spec.gradcam_layer or _last_feature_layer(model)
        self.title = f"Grad-CAM at {layer}" if layer else "Grad-CAM, last conv layer"

    @property
    def map_names(self) -> list[str]:
        return [f"gradcam:{self.target}", "gradcam"]

    def _forward(self, images: Sequence[np.ndarray]) -> list[ImageResult]:
        x = self._input(images)
        cams, logits, self.target = trunk_grad_cam(self.model.net, x, self.target)
        top5 = top_classes(logits[: len(images)])
        note = not_class_scores(logits)
        results = []
        for i, cam in enumerate(cams[: len(images)].float().cpu().numpy()):
            peak = float(cam.max())
            label = top5[i][0]["label"] if top5[i] else "the output"
            layer = LayerMaps(
                f"gradcam:{self.target}",
                cam / peak if peak > 0 else cam,
                cam,
                weights_label=f"for '{label}' / max",
                weights_key="/ max",
                weighted_label=f"for '{label}'",
                weighted_key="Grad-CAM",
                title=self.title,
            )
            results.append(ImageResult(top5[i], [layer], cam, note))
        return results


def _last_feature_layer(model: LoadedModel) -> str:
    """The trunk's last spatial feature map, found now rather than on the first batch: the
    Grad-CAM map is named after it, and that name keys its colour range (--norm)."""
    probe = torch.zeros(1, 3, model.size, model.size, device=model.device)
    try:
        with trunk_mode(model.net):
            return last_feature_layer(model.net, probe)
    except ValueError as exc:
        raise UsageError(f"--method gradcam: {exc}") from None


def make_runner(
    model: LoadedModel,
    method: str,
    layer: str | None,
    with_gradcam: bool = False,
    *,
    parts: bool = False,
    query: tuple[float, float] | None = None,
) -> BatchRunner:
    """The forward passes for ``method``; ``with_gradcam`` adds the trunk's Grad-CAM to each
    result (for a gradcam panel beside the attention maps); ``parts`` and ``query`` as in
    RunOptions."""
    if method == "gradcam":
        if query is not None:
            raise UsageError("--query picks a non-local layer's query point; Grad-CAM has none")
        if layer is not None and layer not in dict(model.net.named_modules()):
            names = [n for n, _ in model.net.named_modules() if n]
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"--method gradcam: the model has no module {layer!r}{hint}")
        return GradCamRunner(model, layer, forward_batch(model.device))
    layers = select_layers(model.net, layer or model.spec.default_layer)
    if query is not None and not reads_query(model.net, layers):
        raise UsageError(
            f"--query picks the point whose attention a layer shows, but "
            f"{', '.join(layers)} {'shows' if len(layers) == 1 else 'show'} no point's "
            "attention (non-local blocks and attention over positions do; see attnviz layers)"
        )
    _check_user_selections(model, layers)
    return BatchRunner(
        model, layers, with_gradcam, forward_batch(model.device), parts=parts, query=query
    )


def _check_user_selections(model: LoadedModel, layers: list[str]) -> None:
    """Run a blank photo through modules that --layer names outside the attention layers: an
    output that is not a one-channel map is then a usage error, not every input failing."""
    chosen = user_selected(model.net, layers)
    if chosen:
        probe = torch.zeros(1, 3, model.size, model.size, device=model.device)
        with torch.inference_mode(), capture_maps(model.net, chosen):
            model.net(probe)


def forward_batch(device: torch.device) -> int:
    """The fixed number of photos per forward pass on ``device`` (see BatchRunner).

    One on a CPU, where batching gains little (about 30 images/s either way for lite0 on
    one thread here) and padding would cost a whole forward per photo short; 16 on a GPU,
    where batches are what makes it fast.
    """
    return 1 if device.type == "cpu" else 16


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
        _torch_threads(forward_threads()),
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
        return _decode(item, opts, min_side)
    except AttnvizError:
        return None


def _write_outputs(
    item: InputItem,
    decoded: Decoded,
    result: ImageResult,
    opts: RunOptions,
    ranges: Mapping[str, Range] | None = None,
) -> dict[str, object]:
    ranges = norm_ranges(opts.norm, heat_maps(result), ranges)
    image, original_hw = decoded.rgb, decoded.original_hw
    suffixes = output_suffixes(opts, [m.name for m in result.layers])
    map_boxes: dict[str, list[int]] | None = None
    if opts.layout == "separate":
        images = separate_panels(image, result, opts, ranges, original_hw)
    else:
        composed = compose_figure(image, result, opts, ranges, original_hw)
        images = {"figure": composed.image}
        # Where each layer's map is, so the gallery can show one layer of a many-row figure.
        map_boxes = {name: list(box) for name, box in composed.map_boxes.items()}
    outputs: dict[str, str] = {}
    for name, figure in images.items():
        path = output_path(item, opts.out, suffixes[name])
        write_image(path, figure, opts.fmt)
        outputs[name] = path.relative_to(opts.out).as_posix()
    if opts.save_raw:
        raw_path = output_path(item, opts.out, suffixes["raw"])
        raw = {m.name: m.weights.astype(np.float32) for m in result.layers}
        if result.gradcam is not None:
            raw["gradcam"] = np.asarray(result.gradcam, dtype=np.float32)
        write_npz(raw_path, raw)
        outputs["raw"] = raw_path.relative_to(opts.out).as_posix()
    return {
        "input": str(item.path),
        "outputs": outputs,
        "model": opts.model,
        "image_size": [original_hw[1], original_hw[0]],
        "layers": [m.name for m in result.layers],
        "top5": result.top5,
        **({"top5_note": result.classes_note} if result.classes_note else {}),
        "maps": {m.name: map_stats(m.weights, original_hw) for m in result.layers},
        # The colour range each heat map was drawn with: its own, or the run's (--norm).
        "heat_ranges": {
            name: list(ranges.get(name) or (float(values.min()), float(values.max())))
            for name, values in heat_maps(result).items()
        },
        **({"map_boxes": map_boxes} if map_boxes is not None else {}),
    }


STATS_COLUMNS = (
    "input", "layer", "top1", "top1_prob", "min", "max", "mean", "std", "entropy",
    "mass_top10", "peak_x", "peak_y",
)  # fmt: skip


def write_stats_csv(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """``--stats``: one row per image and layer of this run, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STATS_COLUMNS)
    for record in records:
        # A video has no top-5, but the class most of its frames were given.
        top1 = (record.get("top5") or record.get("top1") or [{}])[0]
        for layer, stats in record.get("maps", {}).items():
            x, y = stats.get("peak_xy", [None, None])
            writer.writerow([
                record["input"], layer, top1.get("label"), top1.get("prob"),
                *(stats.get(k) for k in ("min", "max", "mean", "std", "entropy", "mass_top10")),
                x, y,
            ])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8", "surrogateescape"))
