"""The run manifest: one JSON object per processed input, in out/manifest.jsonl."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from attnviz.errors import AttnvizError
from attnviz.io.files import (
    atomic_write_bytes,
    create_locked_temp,
    in_use,
    output_file_mode,
    write_all,
    write_error,
)

MANIFEST_NAME = "manifest.jsonl"


def record_line(record: Mapping[str, Any]) -> str:
    """A manifest record as one compact JSON line, without its newline: non-ASCII text as is,
    unless a non-UTF-8 file name in it needs the whole line in ASCII escapes."""
    text = json.dumps(dict(record), ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A non-UTF-8 file name (decoded by Python with lone surrogates): JSON's \u escapes
        # keep the line valid UTF-8, and json.loads gives back the exact same path string.
        text = json.dumps(dict(record), ensure_ascii=True, separators=(",", ":"))
    return text


# The manifest being written: a locked temporary (see write.create_locked_temp).
JOURNAL_SUFFIX = ".journal.tmp"


def _journal_stem(name: str) -> str:
    # "manifest.jsonl" -> "manifest"; a shard's "manifest.shard-0-of-4.jsonl" ->
    # "shard-0-of-4", so that no manifest's journal glob matches another's journals.
    stem = name.removesuffix(".jsonl")
    return stem.removeprefix("manifest.") if stem != "manifest" else stem


def journal_glob(name: str = MANIFEST_NAME) -> str:
    """The names of the journals of the manifest called ``name`` (see create_locked_temp)."""
    return f".attnviz-{_journal_stem(name)}.*{JOURNAL_SUFFIX}"


def remove_stale_journals(out_dir: Path, name: str = MANIFEST_NAME) -> None:
    """Delete the journals of killed runs that wrote manifest ``name`` (not live ones)."""
    for journal in Path(out_dir).glob(journal_glob(name)):
        if journal.is_file() and not journal.is_symlink() and not in_use(journal):
            with contextlib.suppress(OSError):
                journal.unlink()


class ManifestWriter:
    """Writes records, in the order added, to a journal that becomes the manifest on close.

    Each record is appended to the journal as it comes (memory stays flat however long the
    run); close() moves the journal over manifest.jsonl atomically, so the manifest on disk
    is always a complete one. It is still written when the run stops early, for the outputs
    that exist; after a SIGKILL the journal is left, and a later run resumes from it.
    """

    def __init__(self, out_dir: Path, name: str = MANIFEST_NAME) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / name
        self._stem = _journal_stem(name)
        self._fd: int | None = None
        self._journal: Path | None = None
        self._closed = False

    def add(self, record: Mapping[str, Any]) -> None:
        """Append one record; it is serialised now so a bad value fails at its source."""
        if self._closed:
            raise RuntimeError("ManifestWriter is closed")
        line = (record_line(record) + "\n").encode("utf-8")
        try:
            if self._fd is None:
                self._fd, self._journal = create_locked_temp(
                    self.out_dir, self._stem, suffix=JOURNAL_SUFFIX
                )
            write_all(self._fd, line)  # unbuffered: in the OS's hands, it survives a kill
        except OSError as exc:
            raise write_error(self.path, exc) from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._fd is None:
            atomic_write_bytes(self.path, b"")
            return
        try:
            os.fsync(self._fd)
            os.fchmod(self._fd, output_file_mode())
            os.replace(self._journal, self.path)  # type: ignore[arg-type]
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._journal.unlink()  # type: ignore[union-attr]
            raise write_error(self.path, exc) from exc
        finally:
            os.close(self._fd)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except AttnvizError:
            # Don't let a failed manifest write hide the error that ended the run.
            if exc is None:
                raise


def read_manifest(
    path: Path, *, allow_torn_tail: bool = False, skipped: list[str] | None = None
) -> list[dict[str, Any]]:
    """Read a manifest written by ManifestWriter (blank lines ignored).

    ``allow_torn_tail`` is for the journal of a killed run: its last line may be cut short.
    With ``skipped``, a line that is not a JSON object (half-written by another tool's crash)
    is left out and described there, instead of making the whole manifest unreadable.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AttnvizError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    lines = data.split(b"\n")  # one line at a time: a torn line may end mid-character
    if allow_torn_tail:
        lines[-1] = b""  # complete lines end with a newline; anything after the last is torn
    records: list[dict[str, Any]] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8", errors="strict"))
            problem = None if isinstance(record, dict) else "not a JSON object"
        except UnicodeDecodeError:
            problem = "not UTF-8 text"
        except json.JSONDecodeError as exc:
            problem = exc.msg
        if problem is not None:
            message = f"{path}:{lineno}: invalid manifest line ({problem})"
            if skipped is None:
                raise AttnvizError(message)
            skipped.append(message)
            continue
        records.append(record)
    return records
