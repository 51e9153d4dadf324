"""Frames in and out: read a video file or a folder of frames, write an mp4 and a short GIF.

No model code here. Frames are RGB uint8 (H, W, 3) on this module's surface; OpenCV's BGR
stays inside it (see _bgr_to_rgb, _rgb_to_bgr). Outputs are written the way every attnviz
output is: into a locked temporary file next to the target, renamed into place on success.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from attnviz.choices import DEFAULT_MAX_PIXELS
from attnviz.errors import AttnvizError, UsageError
from attnviz.io.decode import decode_image
from attnviz.io.files import atomic_write_bytes, create_locked_temp, output_file_mode, write_error
from attnviz.io.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES

__all__ = [
    "DEFAULT_FPS",
    "VIDEO_SUFFIXES",
    "FrameFolder",
    "FrameSource",
    "GifWriter",
    "VideoFile",
    "VideoWriter",
    "expected_frames",
    "is_video",
    "natural_key",
    "open_frames",
]

# FFmpeg reports every damaged packet on stderr, which would tear through the progress bar;
# attnviz counts those frames and reports them itself. Read once, when OpenCV first uses
# FFmpeg; a level the user set is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

# What players and most cameras default to when a file carries no usable frame rate.
DEFAULT_FPS = 25.0
# Failed reads in a row after which a stream is taken to have ended, unless its header
# says frames are still to come (then up to _GIVE_UP_READS, for a long damaged stretch).
_END_PATIENCE = 32
_GIVE_UP_READS = 1500
_MAX_FPS = 1000.0  # above this a header's frame rate is garbage, not a high-speed camera

# Short means short: a GIF is for a slide or a README, not for the whole clip.
GIF_MAX_SECONDS = 10.0
GIF_MAX_FRAMES = 300
GIF_MAX_WIDTH = 640
# Browsers play GIF delays under 20 ms as 100 ms; 20 ms is the fastest that plays as asked.
_GIF_MIN_DELAY_MS = 20


def is_video(path: Path) -> bool:
    """Whether `path` names a video file by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key under which "frame2" comes before "frame10"."""
    # (0, number) and (1, text) parts never compare an int with a str.
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.casefold())
        for part in re.split(r"(\d+)", name)
        if part
    )


def _bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _rgb_to_bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log while a backend is tried: failures become our errors."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


# --- reading ------------------------------------------------------------------------------


class FrameSource(Protocol):
    """Frames of one video, in order. Use as a context manager; it releases the file."""

    fps: float  # frames per second of the source
    fps_assumed: bool  # True when the source gave no usable rate and DEFAULT_FPS is used
    frame_count: int | None  # what the source claims; a hint for progress, may be wrong

    def frames(self, every: int = 1) -> Iterator[tuple[int, np.ndarray | None]]:
        """(frame index, RGB frame) for frames 0, every, 2*every...; None for a corrupt one."""
        ...

    def __enter__(self) -> FrameSource: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _check_every(every: int) -> None:
    if every < 1:
        raise UsageError(f"--every must be at least 1, got {every}")


def _usable_fps(value: float) -> float | None:
    return value if math.isfinite(value) and 0 < value <= _MAX_FPS else None


class VideoFile:
    """The frames of a video file, decoded by OpenCV's FFmpeg backend."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not os.access(self.path, os.R_OK):
            raise AttnvizError(f"{self.path}: cannot read video (no such file or no permission)")
        with _quiet_opencv():
            # FFmpeg only: other backends would take a text file for an image sequence.
            self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            self._cap.release()
            raise AttnvizError(
                f"{self.path}: cannot open as a video (not a video file, damaged beyond its "
                "header, or a codec this OpenCV build lacks)"
            )
        fps = _usable_fps(float(self._cap.get(cv2.CAP_PROP_FPS)))
        self.fps_assumed = fps is None
        self.fps = fps or DEFAULT_FPS
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else None

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cap.release()

    def frames(self, every: int = 1) -> Iterator[tuple[int, np.ndarray | None]]:
        _check_every(every)
        for index, grabbed in enumerate(self._grabs()):
            if index % every:
                continue  # grabbed, never converted: skipped frames cost decoding only
            if not grabbed:
                yield index, None
                continue
            ok, bgr = self._cap.retrieve()
            yield index, _bgr_to_rgb(bgr) if ok and bgr is not None else None

    def _grabs(self) -> Iterator[bool]:
        """One bool per frame of the stream: grabbed (retrieve it now), or corrupt.

        OpenCV answers False both for a frame FFmpeg cannot decode and at the end of the
        stream. A damaged frame fails once and the next read goes on with the next frame,
        so failures followed by a success were corrupt frames; failures at the end are
        corrupt only as far as the header promised frames that never came.
        """
        position = 0  # frames of the stream settled so far, corrupt ones included
        failed = 0  # failed reads since the last frame, not yet known to be corrupt
        while True:
            if self._cap.grab():
                for _ in range(failed):
                    yield False
                position += failed + 1
                failed = 0
                yield True
                continue
            failed += 1
            promised = self.frame_count is not None and position + failed < self.frame_count
            if failed >= _GIVE_UP_READS or (failed >= _END_PATIENCE and not promised):
                break
        missing = self.frame_count - position if self.frame_count is not None else 0
        for _ in range(min(failed, max(0, missing))):
            yield False


class FrameFolder:
    """A folder of image files read as the frames of one video, in natural name order."""

    def __init__(
        self, folder: Path, fps: float = DEFAULT_FPS, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.path = Path(folder)
        try:
            names = [e.name for e in os.scandir(self.path) if self._is_frame(e)]
        except OSError as exc:
            raise AttnvizError(f"{self.path}: cannot read folder ({exc.strerror or exc})") from exc
        if not names:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise AttnvizError(f"{self.path}: no frames in folder (image files: {suffixes})")
        self._files = [self.path / n for n in sorted(names, key=natural_key)]
        self.fps = fps
        self.fps_assumed = False  # a folder has no rate of its own: the given one is it
        self.frame_count: int | None = len(self._files)
        self._max_pixels = max_pixels

    @staticmethod
    def _is_frame(entry: os.DirEntry[str]) -> bool:
        # Hidden files are editors' and attnviz's own temporaries, never frames.
        return (
            not entry.name.startswith(".")
            and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
            and entry.is_file()
        )

    def __enter__(self) -> FrameFolder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def frames(self, every: int = 1) -> Iterator[tuple[int, np.ndarray | None]]:
        _check_every(every)
        for index in range(0, len(self._files), every):
            try:
                yield index, decode_image(self._files[index], self._max_pixels).rgb
            except AttnvizError:
                yield index, None  # one bad frame file costs that frame, not the video


def open_frames(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> FrameSource:
    """The frame source for a video file, or for a folder of frames."""
    path = Path(path)
    return FrameFolder(path, max_pixels=max_pixels) if path.is_dir() else VideoFile(path)


def expected_frames(path: Path, every: int = 1) -> int | None:
    """How many frames a run with `every` will take from `path`, if the source says; for
    progress bars only (a container's count can be wrong, damaged frames are counted)."""
    try:
        with open_frames(path) as source:
            count = source.frame_count
    except AttnvizError:
        return None
    return None if count is None else -(-count // every)


# --- writing -------------------------------------------------------------------------------


def _even(n: int) -> int:
    return n + n % 2


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`frame` on a black (width, height) canvas: scaled to fit, aspect kept, centred."""
    width, height = size
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    scale = min(width / w, height / h)
    new_w, new_h = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    if (new_w, new_h) != (w, h):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        frame = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = frame
    return canvas


@dataclass(frozen=True)
class _Codec:
    fourcc: str
    suffix: str
    api: int


# mp4v plays everywhere that matters and every OpenCV FFmpeg build can encode it; H.264
# needs an encoder the pip wheels do not ship. MJPG in AVI is the fallback OpenCV can
# always write, even without FFmpeg.
_CODECS = (
    _Codec("mp4v", ".mp4", cv2.CAP_FFMPEG),
    _Codec("MJPG", ".avi", cv2.CAP_FFMPEG),
    _Codec("MJPG", ".avi", cv2.CAP_OPENCV_MJPEG),
)


def _open_encoder(
    target: Path, codec: _Codec, fps: float, size: tuple[int, int]
) -> cv2.VideoWriter | None:
    """An OpenCV writer whose bytes land in `target`, or None when the codec cannot open.

    OpenCV picks the container from the file name's suffix, and attnviz temporaries must
    end in .tmp (that is how a later run finds a killed run's leftovers). So the writer
    opens a link with the right suffix in a private folder, pointing at the temporary
    file; FFmpeg keeps the file open, and the link is gone before the first frame.
    """
    link_dir = Path(tempfile.mkdtemp(prefix="attnviz-video-"))
    try:
        link = link_dir / f"frames{codec.suffix}"
        link.symlink_to(target.resolve())
        with _quiet_opencv():
            writer = cv2.VideoWriter(
                str(link), codec.api, cv2.VideoWriter.fourcc(*codec.fourcc), fps, size
            )
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)
    if writer.isOpened():
        return writer
    writer.release()
    return None


class VideoWriter:
    """Context manager writing RGB frames to a video at `path`, atomically.

    The codec opens with the first frame (its size is the video's); later frames of another
    size are fitted onto that one. The video appears under its final name only when the
    `with` block ends without an error and the file reads back with every frame; anything
    else (an exception, Ctrl-C) removes the temporary file. When mp4v cannot be encoded,
    MJPG in an .avi next to `path` is written instead: `path` and `note` then say so.
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height) as written
        self.codec: str | None = None
        self.note: str | None = None
        self._encoder: cv2.VideoWriter | None = None
        self._fd: int | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> VideoWriter:
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 (H, W, 3) frame."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected uint8 (H, W, 3) RGB, got {frame.dtype} {frame.shape}")
        if self._encoder is None:
            # Encoders want even sides (FFmpeg would crop the odd pixel silently).
            self.size = (_even(frame.shape[1]), _even(frame.shape[0]))
            self._open(self.size)
        assert self._encoder is not None and self.size is not None
        self._encoder.write(_rgb_to_bgr(fit_frame(frame, self.size)))
        self.frames += 1

    def _open(self, size: tuple[int, int]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for codec in _CODECS:
                target = self.path.with_suffix(codec.suffix)
                # Same folder as the target: os.replace is only atomic within a filesystem.
                self._fd, self._tmp = create_locked_temp(target.parent, target.name)
                self._encoder = _open_encoder(self._tmp, codec, self.fps, size)
                if self._encoder is not None:
                    self.codec = codec.fourcc
                    if target != self.path:
                        self.note = f"no mp4v encoder in this OpenCV: wrote {codec.fourcc} AVI"
                    self.path = target
                    return
                self._discard()
        except OSError as exc:
            self._discard()
            raise write_error(self.path, exc) from exc
        raise AttnvizError(f"{self.path}: OpenCV can encode neither mp4v nor MJPG video")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or self._encoder is None:
            self._discard()  # failed, interrupted, or not a single frame: nothing to show
            return
        try:
            self._commit()
        finally:
            self._discard()

    def _commit(self) -> None:
        assert self._encoder is not None and self._tmp is not None and self._fd is not None
        self._encoder.release()  # writes the index (mp4's moov) that makes the file playable
        self._encoder = None
        # OpenCV reports no write errors (a full disk included): read the result back.
        written = _frame_count(self._tmp)
        if written != self.frames:
            raise AttnvizError(
                f"{self.path}: the video encoder wrote {written} of {self.frames} frames"
            )
        try:
            os.fsync(self._fd)
            os.fchmod(self._fd, output_file_mode())
            os.replace(self._tmp, self.path)  # still locked: a sweeping run never takes it
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self._tmp = None

    def _discard(self) -> None:
        if self._encoder is not None:
            self._encoder.release()
            self._encoder = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _frame_count(path: Path) -> int:
    """Frames a finished video file holds, as its header says (0 when it does not open)."""
    with _quiet_opencv():
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


class GifWriter:
    """Collects the first frames of a video for a short looping GIF, written by save().

    Keeps at most GIF_MAX_FRAMES frames and GIF_MAX_SECONDS of playing time, scaled down
    to GIF_MAX_WIDTH; `note` says when the GIF was cut. Frames are stored palette-reduced
    (one byte a pixel), as the GIF will hold them anyway.
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        # GIF stores delays in hundredths of a second.
        self.delay_ms = max(_GIF_MIN_DELAY_MS, 10 * round(100.0 / fps))
        self.limit = max(1, min(GIF_MAX_FRAMES, int(GIF_MAX_SECONDS * 1000 // self.delay_ms)))
        self.offered = 0  # frames given to add(), kept or not
        self._frames: list[Image.Image] = []
        self._size: tuple[int, int] | None = None

    @property
    def note(self) -> str | None:
        if self.offered <= len(self._frames):
            return None
        seconds = len(self._frames) * self.delay_ms / 1000
        return f"GIF cut to the first {len(self._frames)} frames ({seconds:g} s)"

    def add(self, frame: np.ndarray) -> None:
        self.offered += 1
        if len(self._frames) >= self.limit:
            return
        if self._size is None:
            h, w = frame.shape[:2]
            scale = min(1.0, GIF_MAX_WIDTH / w)
            self._size = (max(1, round(w * scale)), max(1, round(h * scale)))
        fitted = fit_frame(frame, self._size)
        image = Image.fromarray(np.ascontiguousarray(fitted))
        self._frames.append(image.convert("P", palette=Image.Palette.ADAPTIVE))

    def save(self) -> None:
        """Write the GIF atomically; nothing is written when no frame was added."""
        if not self._frames:
            return
        buf = io.BytesIO()
        first, *rest = self._frames
        first.save(
            buf, format="GIF", save_all=True, append_images=rest, duration=self.delay_ms, loop=0
        )
        atomic_write_bytes(self.path, buf.getvalue())
