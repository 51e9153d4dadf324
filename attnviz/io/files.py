"""Write files so that readers see the old file or the whole new one, never half of it.

Every output goes through a locked temporary file in the target's folder and a rename;
leftovers of a killed run are told from a live run's by the lock. No numpy or OpenCV here:
the options check (attnviz.engine.options) uses these before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import tempfile
from pathlib import Path

from attnviz.errors import AttnvizError, OutputError


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
