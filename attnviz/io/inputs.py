"""Find the input images and map each one to its place under the output folder."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attnviz.errors import AttnvizError

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
)


@dataclass(frozen=True)
class InputItem:
    """One file to process; `relative` is where it sits in the tree being mirrored."""

    path: Path
    relative: Path


@dataclass(frozen=True)
class Rejected:
    """An input that will not be processed, with a reason to show the user."""

    path: Path
    reason: str


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or path.is_relative_to(folder))


def _walk(
    root: Path, pattern: str | None, exclude: Path | None, rejected: list[Rejected]
) -> list[tuple[Path, Path]]:
    """(file, path relative to root) for every image under root, sorted by relative path."""

    def on_error(err: OSError) -> None:
        where = Path(err.filename) if err.filename else root
        rejected.append(Rejected(where, f"cannot read directory ({err.strerror or err})"))

    found: list[tuple[Path, Path]] = []
    # followlinks=False: a symlink pointing at an ancestor would otherwise loop forever.
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        here = Path(dirpath)
        # Prune the output folder so results of an earlier run are never fed back in.
        dirnames[:] = [d for d in dirnames if not _inside((here / d).resolve(), exclude)]
        for name in filenames:
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = (here / name).relative_to(root)
            if pattern is not None and not (
                fnmatch.fnmatch(rel.as_posix(), pattern) or fnmatch.fnmatch(name, pattern)
            ):
                continue
            found.append((here / name, rel))
    found.sort(key=lambda pair: pair[1].parts)
    return found


def discover(
    paths: Sequence[Path], pattern: str | None = None, exclude: Path | None = None
) -> tuple[list[InputItem], list[Rejected]]:
    """Expand files and folders into input items, in a deterministic order.

    Files named directly are taken whatever their suffix (decoding decides); folders are
    walked recursively for image suffixes, filtered by `pattern` if given. Files under
    `exclude` (the output folder) are skipped. Inputs that would write the same output
    file as an earlier one are rejected rather than silently overwriting it.
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
        if given.is_dir():
            candidates = _walk(given, pattern, excluded, rejected)
        elif given.is_file():
            candidates = [(given, Path(given.name))]
        elif given.exists():
            rejected.append(Rejected(given, "not a regular file or directory"))
            continue
        else:
            rejected.append(Rejected(given, "no such file or directory"))
            continue

        for path, rel in candidates:
            real = path.resolve()
            if _inside(real, excluded):
                # Only a directly named file can get here; say why it was dropped.
                rejected.append(Rejected(path, "inside the output folder"))
                continue
            if real in seen:
                continue
            if not real.is_file():
                rejected.append(Rejected(path, "not a regular file (broken link?)"))
                continue
            key = rel.with_suffix("").as_posix().casefold()
            if key in claimed:
                rejected.append(Rejected(path, f"output name clashes with {claimed[key]}"))
                continue
            seen.add(real)
            claimed[key] = path
            items.append(InputItem(path=path, relative=rel))
    return items, rejected


def output_path(item: InputItem, out_dir: Path, suffix: str) -> Path:
    """Where the result for `item` goes: its relative path under out_dir, new suffix."""
    rel = item.relative
    # relative comes from discover(), but InputItem is public: never let it escape out_dir.
    if rel.is_absolute() or rel.anchor or ".." in rel.parts or rel.name in ("", "."):
        raise AttnvizError(f"{item.path}: unsafe output location {str(rel)!r}")
    if not suffix.startswith("."):
        suffix = "." + suffix
    return out_dir / rel.with_suffix(suffix)
