"""Find the input images and map each one to its place under the output folder."""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attnviz.errors import AttnvizError

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
)
# Kept here rather than in attnviz.io.video so that finding inputs needs no video code.
VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".webm", ".mkv"})
_WALKED_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


@dataclass(frozen=True)
class InputItem:
    """One file to process; `relative` is where it sits in the tree being mirrored."""

    path: Path
    relative: Path


@dataclass(frozen=True)
class Rejected:
    """An input that will not be processed, with a reason to show the user.

    ``failed`` is False for inputs that are harmlessly left out (the same file given twice),
    so they are reported without making the run fail.
    """

    path: Path
    reason: str
    failed: bool = True


def _classify(path: Path, allow_dir: bool = False) -> tuple[Path | None, str]:
    """(resolved path, "") for a readable regular file (or folder), else (None, why not)."""
    try:
        st = os.stat(path)  # follows links: a loop or a dangling link fails here
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symlink loop"
        if exc.errno == errno.ENAMETOOLONG:
            return None, "file name too long"
        if os.path.lexists(path):
            return None, "broken symlink" if os.path.islink(path) else (exc.strerror or str(exc))
        return None, "no such file or directory"
    if stat.S_ISDIR(st.st_mode):
        return (Path(os.path.realpath(path)), "") if allow_dir else (None, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file (device, pipe or socket)"
    return Path(os.path.realpath(path)), ""


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or path.is_relative_to(folder))


def _walk(
    root: Path, pattern: str | None, exclude: Path | None, rejected: list[Rejected]
) -> list[tuple[Path, Path]]:
    """(file, path relative to root) for every image or video under root, sorted."""

    def on_error(err: OSError) -> None:
        where = Path(err.filename) if err.filename else root
        rejected.append(Rejected(where, f"cannot read directory ({err.strerror or err})"))

    found: list[tuple[Path, Path]] = []
    # followlinks=False: a symlink pointing at an ancestor would otherwise loop forever.
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        here = Path(dirpath)
        # Prune the output folder so results of an earlier run are never fed back in, and
        # hidden folders (.git, an older output folder's .thumbs): not photos to explain.
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".") and not _inside((here / d).resolve(), exclude)
        ]
        for name in filenames:
            if Path(name).suffix.lower() not in _WALKED_SUFFIXES:
                continue
            rel = (here / name).relative_to(root)
            if pattern is not None and not (
                fnmatch.fnmatch(rel.as_posix(), pattern) or fnmatch.fnmatch(name, pattern)
            ):
                continue
            found.append((here / name, rel))
    found.sort(key=lambda pair: pair[1].parts)
    return found


def _as_video_item(folder: Path) -> tuple[Path, Path]:
    """(folder, relative output name) for a folder of frames that is one video."""
    # "." or "/" has no name of its own: name the video after the folder it really is.
    name = folder.name or Path(os.path.realpath(folder)).name or "frames"
    return folder, Path(name)


def discover(
    paths: Sequence[Path],
    pattern: str | None = None,
    exclude: Path | None = None,
    as_video: bool = False,
) -> tuple[list[InputItem], list[Rejected]]:
    """Expand files and folders into input items, in a deterministic order.

    Files named directly are taken whatever their suffix (decoding decides); folders are
    walked recursively for image and video suffixes, filtered by `pattern` if given. With
    `as_video`, a folder named directly is one item instead: its frames make a video.
    Files under `exclude` (the output folder) are skipped. Inputs that would write the
    same output file as an earlier one are rejected rather than silently overwriting it;
    a file given twice is processed once (and reported, not failed).
    """
    excluded = exclude.resolve() if exclude is not None else None
    items: list[InputItem] = []
    rejected: list[Rejected] = []
    seen: set[Path] = set()
    # Output name without suffix, case-folded because case-insensitive filesystems
    # (macOS, Windows) would make "A.jpg" and "a.png" overwrite each other's result.
    claimed: dict[str, Path] = {}

    for given in paths:
        given = Path(given)
        if given.is_dir() and as_video:
            candidates = [_as_video_item(given)]
        elif given.is_dir():
            candidates = _walk(given, pattern, excluded, rejected)
        else:
            candidates = [(given, Path(given.name))]

        for path, rel in candidates:
            real, why_not = _classify(path, allow_dir=as_video)
            if real is None:
                rejected.append(Rejected(path, why_not))
                continue
            if _inside(real, excluded):
                # Only a directly named file can get here; say why it was dropped.
                rejected.append(Rejected(path, "inside the output folder"))
                continue
            if real in seen:
                rejected.append(Rejected(path, "given more than once; processed once", False))
                continue
            key = rel.with_suffix("").as_posix().casefold()
            if key in claimed:
                rejected.append(Rejected(path, f"output name clashes with {claimed[key]}"))
                continue
            seen.add(real)
            claimed[key] = path
            items.append(InputItem(path=path, relative=rel))
    # A bad file reached twice (named and inside a named folder) is still one line.
    unique = list({(r.path, r.reason): r for r in rejected}.values())
    return items, unique


def output_path(item: InputItem, out_dir: Path, suffix: str) -> Path:
    """Where the result for `item` goes: its relative path under out_dir, new suffix."""
    rel = item.relative
    # relative comes from discover(), but InputItem is public: never let it escape out_dir.
    if rel.is_absolute() or rel.anchor or ".." in rel.parts or rel.name in ("", "."):
        raise AttnvizError(f"{item.path}: unsafe output location {str(rel)!r}")
    if not suffix.startswith("."):
        suffix = "." + suffix
    target = out_dir / rel.with_suffix(suffix)
    # A symlinked folder inside out_dir must not carry the write somewhere else.
    if not Path(os.path.realpath(target.parent)).is_relative_to(os.path.realpath(out_dir)):
        raise AttnvizError(f"{item.path}: output folder {target.parent} links outside {out_dir}")
    return target


def file_part(name: str) -> str:
    """A layer name made safe for a file name (letters, digits, '.', '-', '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
