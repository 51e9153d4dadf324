"""Resuming a run: which inputs already have up-to-date outputs, according to the manifest.

An output is up to date when the manifest of the output folder records it for the same
input file (same size and modification time), made with the same settings, and every
file it lists still exists inside the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from attnviz.errors import AttnvizError
from attnviz.io.manifest import MANIFEST_NAME, journal_name, read_manifest
from attnviz.io.write import pid_alive


def input_fingerprint(path: Path) -> dict[str, int]:
    """What must not change for an earlier output of `path` to count as up to date."""
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


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
    """The successful records of the output folder's existing manifest, by input path."""

    def __init__(self, out_dir: Path, records: list[dict[str, Any]]) -> None:
        self.out_dir = out_dir
        self._by_input = {
            r["input"]: r for r in records if isinstance(r.get("input"), str) and "error" not in r
        }

    @classmethod
    def load(cls, out_dir: Path) -> tuple[PreviousRun, str | None]:
        """Records of the manifest and of journals left by killed runs (newest last).

        Returns a note too when a manifest could not be used.
        """
        records: list[dict[str, Any]] = []
        path = out_dir / MANIFEST_NAME
        try:
            if path.exists():
                records += read_manifest(path)
            for journal in sorted(out_dir.glob(journal_name(0).replace("-0-", "-*-"))):
                pid = int(journal.name.split("-")[1])
                if not pid_alive(pid):
                    records += read_manifest(journal, allow_torn_tail=True)
        except AttnvizError as exc:
            return cls(out_dir, []), f"{exc}; reprocessing every input"
        return cls(out_dir, records), None

    def _outputs_present(self, record: Mapping[str, Any]) -> bool:
        outputs = record.get("outputs")
        if not isinstance(outputs, dict) or not outputs:
            return False
        paths = [safe_output(self.out_dir, rel) for rel in outputs.values()]
        return all(p is not None and p.is_file() for p in paths)

    def up_to_date(
        self, input_path: str, fingerprint: Mapping[str, int], key: str
    ) -> dict[str, Any] | None:
        """The earlier record for this input if its outputs can be kept as they are."""
        record = self._by_input.get(input_path)
        if record is None:
            return None
        if record.get("input_stat") != dict(fingerprint) or record.get("settings") != key:
            return None
        return record if self._outputs_present(record) else None

    def others(self, inputs: set[str]) -> list[dict[str, Any]]:
        """Records of earlier runs for other inputs whose outputs are still there.

        Kept so the manifest keeps describing every result in the folder, not just the last
        command's.
        """
        return [
            record
            for name, record in self._by_input.items()
            if name not in inputs and self._outputs_present(record)
        ]
