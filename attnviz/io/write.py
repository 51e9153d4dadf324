"""Encode and write outputs atomically, so an interrupted run never leaves half a file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import io
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from attnviz.errors import AttnvizError, OutputError, UsageError

FORMATS = ("png", "jpg", "webp")

# PNG level 1 with the up filter: lossless, about 3x faster to encode than level 3 for
# files about 8 % larger; encoding competes with the forward pass for the CPU.
# OpenCV >= 4.10 lets the caller pick PNG's row filter; older ones try all five per row.
_PNG_FILTER_UP = (
    [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    if hasattr(cv2, "IMWRITE_PNG_FILTER")
    else []
)
_ENCODE_PARAMS: dict[str, tuple[str, list[int]]] = {
    # zlib level 1 with the "up" filter only: 15 ms for a 0.66-Mpx triptych against 41 ms
    # at level 3 with adaptive filters, for files 8 % larger; PNG encoding is most of a
    # figure's cost, and on a CPU it competes with the forward pass for the same cores.
    "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1, *_PNG_FILTER_UP]),
    "jpg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    "webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 95]),
}
# The WebP format itself cannot store larger images; check first for a clear message.
_WEBP_MAX_SIDE = 16383
# Fixed zip timestamp so the same arrays always give byte-identical .npz files.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """Encode an RGB uint8 (H, W, 3) array as `fmt` ("png", "jpg" or "webp").

    The rest of attnviz is RGB throughout; OpenCV's encoders expect BGR, so images swap
    channels here on their way out (video frames do the same in io/video.py).
    """
    if fmt not in _ENCODE_PARAMS:
        raise UsageError(f"unknown image format {fmt!r} (choose from {', '.join(FORMATS)})")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if fmt == "webp" and max(h, w) > _WEBP_MAX_SIDE:
        raise AttnvizError(
            f"cannot encode {w}x{h} image as webp (at most {_WEBP_MAX_SIDE} px a side; use png)"
        )
    ext, params = _ENCODE_PARAMS[fmt]
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(ext, bgr, params)
    except cv2.error as exc:
        ok, buf = False, None
        detail = str(exc).strip().splitlines()[-1]
    else:
        detail = "encoder refused the image"
    if not ok or buf is None:
        raise AttnvizError(f"cannot encode {w}x{h} image as {fmt} ({detail})")
    return buf.tobytes()


@functools.cache
def output_file_mode() -> int:
    """Permission bits for new outputs: what open() would give under the current umask."""
    # mkstemp creates 0600 files; give outputs the usual umask-derived mode instead.
    # os.umask can only be read by setting it, so do it once, not per write.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# Errors that will recur for every later file too: stop the run instead of failing each input.
_FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
# Temporary files are ".attnviz-<name>.<random>.tmp" next to their target. Their writer holds
# an exclusive flock on them until they are renamed, so a later run can tell the leftovers of
# a killed run (SIGKILL, power loss) from a live run's files, whatever the process ids.
TEMP_GLOB = ".attnviz-*.tmp"
_LOCK_ATTEMPTS = 8  # new temporary files tried when sweeps keep taking them
_TMP_NAME_CHARS = 64  # keeps the temporary name under NAME_MAX even for a 255-byte target


def write_error(path: Path, exc: OSError) -> AttnvizError:
    """The error to raise for a failed write: OutputError if later writes would fail too."""
    reason = exc.strerror or str(exc)
    if exc.errno in _FATAL_ERRNOS:
        return OutputError(f"{path}: cannot write ({reason}); stopping")
    return AttnvizError(f"{path}: cannot write ({reason})")


def create_locked_temp(folder: Path, name: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new temporary file in `folder` (never through a planted symlink), flock-ed by us.

    Between mkstemp and flock the file is unlocked, so another run's sweep
    (``remove_stale_temps``) may take it for a killed run's leftover. The sweep deletes only
    while it holds the lock, so once ours is taken, a file still at its path is ours for good;
    otherwise try a new one.
    """
    for _ in range(_LOCK_ATTEMPTS):
        fd, tmp = tempfile.mkstemp(
            dir=folder, prefix=f".attnviz-{name[:_TMP_NAME_CHARS]}.", suffix=suffix
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, Path(tmp)):
                return fd, Path(tmp)
        except BlockingIOError:
            pass  # a sweep holds it, and is deleting it
        os.close(fd)
    raise OSError(errno.EAGAIN, f"could not create a temporary file in {folder}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, ours = path.lstat(), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (one call may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def in_use(path: Path) -> bool:
    """Whether a live process still holds the lock of this temporary file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock we may have just taken
    return False


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left under `folder` by attnviz runs that were killed.

    Manifest journals are spared: they hold a killed run's records until the run that
    resumes it has them (see manifest.remove_stale_journals).
    """
    removed = 0
    for tmp in Path(folder).rglob(TEMP_GLOB):
        if tmp.name.endswith(".journal.tmp"):
            continue
        if tmp.is_symlink() or not tmp.is_file():
            continue
        removed += _remove_if_unlocked(tmp)
    return removed


def _remove_if_unlocked(tmp: Path) -> int:
    """Delete ``tmp`` while holding its lock (1), or leave a live run's file alone (0).

    Holding the lock while deleting is what lets ``create_locked_temp`` tell a file it has
    just locked from one a sweep took before it could.
    """
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _same_file(fd, tmp):
            return 0
        tmp.unlink()
        return 1
    except OSError:  # BlockingIOError: a live run holds it
        return 0
    finally:
        os.close(fd)


def check_writable(folder: Path) -> None:
    """Fail early, before a model is loaded, when `folder` cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = create_locked_temp(folder, "probe")
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"{folder}: output folder is not writable ({exc.strerror or exc})"
        ) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one.

    Raises OutputError when the disk is full or read-only (later writes would fail too),
    AttnvizError for other write failures of this one file.
    """
    fd: int | None = None
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target: os.replace is only atomic within one filesystem.
        fd, tmp = create_locked_temp(path.parent, path.name)
        write_all(fd, data)
        os.fsync(fd)
        os.fchmod(fd, output_file_mode())
        os.replace(tmp, path)  # still locked: a sweeping run never takes it mid-rename
        tmp = None
    except BaseException as exc:
        # BaseException too: Ctrl-C mid-write must not leave .tmp litter behind.
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
    finally:
        if fd is not None:
            os.close(fd)


def write_image(path: str | os.PathLike[str], image: np.ndarray, fmt: str) -> None:
    """Encode an RGB uint8 image as `fmt` and write it atomically to `path`."""
    atomic_write_bytes(Path(path), encode_image(image, fmt))


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as float32 to a compressed .npz, readable with np.load, atomically.

    Built by hand rather than with np.savez_compressed: that takes names as keyword
    arguments (so keys like "file" clash) and stamps the current time into the zip.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as member:
                arr = np.ascontiguousarray(value, dtype=np.float32)
                np.lib.format.write_array(member, arr, allow_pickle=False)
    atomic_write_bytes(Path(path), buf.getvalue())
