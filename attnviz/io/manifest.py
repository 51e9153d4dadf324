"""The run manifest: one JSON object per processed input, in out/manifest.jsonl."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from attnviz.errors import AttnvizError
from attnviz.io.write import atomic_write_bytes

MANIFEST_NAME = "manifest.jsonl"


def _dumps(record: Mapping[str, Any]) -> str:
    text = json.dumps(dict(record), ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A non-UTF-8 file name (decoded by Python with lone surrogates): JSON's \u escapes
        # keep the line valid UTF-8, and json.loads gives back the exact same path string.
        text = json.dumps(dict(record), ensure_ascii=True, separators=(",", ":"))
    return text


class ManifestWriter:
    """Collects records and writes them, in the order added, when closed.

    Written whole and atomically (at checkpoints and at the end), so a manifest on disk is
    always well-formed; it is still written if the run stops early, for the outputs that exist.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / MANIFEST_NAME
        self._lines: list[str] = []
        self._closed = False

    def add(self, record: Mapping[str, Any]) -> None:
        """Queue one record; it is serialised now so a bad value fails at its source."""
        if self._closed:
            raise RuntimeError("ManifestWriter is closed")
        self._lines.append(_dumps(record))

    def checkpoint(self) -> None:
        """Write what is known so far, so even a killed run leaves a manifest to resume from."""
        text = "".join(line + "\n" for line in self._lines)
        atomic_write_bytes(self.path, text.encode("utf-8"))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.checkpoint()

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


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Read a manifest written by ManifestWriter (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AttnvizError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise AttnvizError(f"{path}: cannot read manifest (not UTF-8 text)") from exc
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AttnvizError(f"{path}:{lineno}: invalid manifest line ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise AttnvizError(f"{path}:{lineno}: invalid manifest line (not a JSON object)")
        records.append(record)
    return records
