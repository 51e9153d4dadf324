"""Resuming a run: which inputs already have up-to-date outputs, according to the manifest.

An output is up to date when the manifest of the output folder records it for the same
input file (same size and modification time), made with the same settings, and every
file it lists still exists inside the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from attnviz.errors import AttnvizError
from attnviz.io.files import in_use
from attnviz.io.manifest import MANIFEST_NAME, journal_glob, read_manifest


def input_fingerprint(path: Path) -> dict[str, Any]:
    """What must not change for an earlier output of `path` to count as up to date.

    The real path identifies the input whatever the spelling or working directory.
    """
    st = os.stat(path)
    size, mtime = st.st_size, st.st_mtime_ns
    if stat.S_ISDIR(st.st_mode):
        # A folder of frames (--as-video): a frame rewritten in place changes no folder time.
        with os.scandir(path) as entries:
            files = [e.stat() for e in entries if e.is_file()]
        size = sum(f.st_size for f in files)
        mtime = max([mtime, *(f.st_mtime_ns for f in files)])
    return {"path": os.path.realpath(path), "bytes": size, "mtime_ns": mtime}


def _source(record: Mapping[str, Any]) -> str | None:
    stat = record.get("input_stat")
    source = stat.get("path") if isinstance(stat, dict) else None
    return source if isinstance(source, str) else None


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short stable digest of everything (model, flags, version) that shapes the outputs."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def safe_output(out_dir: Path, relative: object) -> Path | None:
    """The file a manifest's output entry names, or None if it would leave out_dir.

    Manifests are data a user may have edited or copied: an absolute path, a '..' or a
    symlink pointing elsewhere must never make attnviz trust (or touch) a file outside.
    """
    if not isinstance(relative, str) or not relative:
        return None
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or "\\" in relative:
        return None
    path = out_dir / rel
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(out_dir)):
        return None
    return path


class PreviousRun:
    """The successful records of the output folder's existing manifest, by real input path."""

    def __init__(self, out_dir: Path, records: list[dict[str, Any]]) -> None:
        self.out_dir = out_dir
        self._by_input = {
            _source(r): r for r in records if _source(r) is not None and "error" not in r
        }

    @classmethod
    def load(cls, out_dir: Path, name: str = MANIFEST_NAME) -> tuple[PreviousRun, str | None]:
        """Records of the manifest and of journals left by killed runs (newest last).

        Returns a note too when a manifest could not be used.
        """
        records: list[dict[str, Any]] = []
        skipped: list[str] = []
        path = out_dir / name
        try:
            if path.exists():
                records += read_manifest(path, skipped=skipped)
            journals = [
                j for j in out_dir.glob(journal_glob(name)) if j.is_file() and not in_use(j)
            ]
            for journal in sorted(journals, key=lambda j: j.stat().st_mtime_ns):
                records += read_manifest(journal, allow_torn_tail=True, skipped=skipped)
        except AttnvizError as exc:
            return cls(out_dir, []), f"{exc}; reprocessing every input"
        if skipped:  # the good records are kept: only the inputs of bad lines are redone
            more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
            return cls(out_dir, records), f"{skipped[0]}{more}: skipped"
        return cls(out_dir, records), None

    def _outputs_present(self, record: Mapping[str, Any]) -> bool:
        outputs = record.get("outputs")
        if not isinstance(outputs, dict) or not outputs:
            return False
        paths = [safe_output(self.out_dir, rel) for rel in outputs.values()]
        return all(p is not None and p.is_file() for p in paths)

    def up_to_date(self, fingerprint: Mapping[str, Any], key: str) -> dict[str, Any] | None:
        """The earlier record for this input if its outputs can be kept as they are."""
        record = self.still_present(fingerprint["path"])
        if record is None or record.get("settings") != key:
            return None
        return record if record.get("input_stat") == dict(fingerprint) else None

    def still_present(self, source: str) -> dict[str, Any] | None:
        """The earlier record for this real input path, if its outputs are all still there."""
        record = self._by_input.get(source)
        return record if record is not None and self._outputs_present(record) else None

    def others(self, sources: set[str]) -> list[dict[str, Any]]:
        """Records of earlier runs for other inputs whose outputs are still there.

        Kept so the manifest keeps describing every result in the folder, not just the last
        command's.
        """
        return [
            record
            for source, record in self._by_input.items()
            if source not in sources and self._outputs_present(record)
        ]
