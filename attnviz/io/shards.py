"""Splitting one data set over N independent jobs (``--shard K/N``) and merging their manifests.

Each input belongs to exactly one shard, decided by a hash of its path relative to the
folder given (the same on every machine that runs the same command), so N jobs cover a
data set exactly once, and an input added later does not move the others. Each shard
writes its own manifest, ``manifest.shard-K-of-N.jsonl``, beside the others in a shared
output folder; ``merge_manifests`` joins them into ``manifest.jsonl``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnviz.errors import AttnvizError, UsageError
from attnviz.io.files import atomic_write_bytes, in_use
from attnviz.io.manifest import JOURNAL_SUFFIX, MANIFEST_NAME, read_manifest, record_line

_SHARD_FILE = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.jsonl$")
# A shard's manifest being written (see manifest.journal_glob); a killed job leaves it.
_SHARD_JOURNAL = re.compile(rf"^\.attnviz-shard-(\d+)-of-(\d+)\..*{re.escape(JOURNAL_SUFFIX)}$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (counted from 0) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise UsageError(f"--shard must look like K/N (e.g. 0/4), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or index >= count:
            raise UsageError(
                f"--shard {text}: K counts from 0 and must be below N (0/{count} .. "
                f"{max(count - 1, 0)}/{count})"
            )
        return cls(index, count)

    def holds(self, key: str) -> bool:
        """Whether the input named ``key`` (its relative path) belongs to this shard."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    @property
    def manifest_name(self) -> str:
        return self.file_for(Path("manifest.jsonl")).name

    def file_for(self, path: Path) -> Path:
        """The shard's own version of a file all jobs are given: ``maps.shard-1-of-4.csv``."""
        return path.with_name(f"{path.stem}.shard-{self.index}-of-{self.count}{path.suffix}")


@dataclass
class MergeReport:
    """What a merge did: the manifest it wrote (``path``), the shard manifests it read, its records
    and how many failed, and the shards (as "K/N") missing, interrupted or still running."""

    path: Path
    shards: list[Path]
    records: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)  # shards of N that wrote no manifest
    # Shards whose job was killed: their journal's records are merged, the rest is undone.
    interrupted: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)  # shards whose job is still writing


def _shard_files(out_dir: Path, pattern: str, name: re.Pattern[str]) -> list[tuple[int, int, Path]]:
    """(N, K, path) of the files in ``out_dir`` whose name ``name`` matches, sorted."""
    return sorted(
        (int(m.group(2)), int(m.group(1)), path)
        for path in Path(out_dir).glob(pattern)
        if (m := name.match(path.name)) is not None and path.is_file() and not path.is_symlink()
    )


def merge_manifests(out_dir: Path) -> MergeReport:
    """Join the shard manifests of ``out_dir`` into its ``manifest.jsonl`` (atomically).

    One record per input, its newest: a shard's record replaces the folder manifest's, and
    a killed job's journal counts as its shard's newest records (the shard is reported as
    interrupted), except that a failure never replaces a success. A live job's journal is
    left alone (reported as running). The shard manifests stay, so a shard can be rerun and
    the merge repeated.
    """
    found = _shard_files(out_dir, "manifest.shard-*-of-*.jsonl", _SHARD_FILE)
    journals = _shard_files(out_dir, f".attnviz-shard-*-of-*{JOURNAL_SUFFIX}", _SHARD_JOURNAL)
    live = [(n, k, j) for n, k, j in journals if in_use(j)]
    killed = [(n, k, j) for n, k, j in journals if not in_use(j)]
    if not found and not killed:
        raise AttnvizError(f"{out_dir}: no shard manifests (manifest.shard-K-of-N.jsonl) to merge")
    counts = {count for count, _, _ in found + killed}
    if len(counts) > 1:
        splits = ", ".join(f"N={n}" for n in sorted(counts))
        raise AttnvizError(
            f"{out_dir}: shard manifests of different splits ({splits}); "
            "remove the stale ones and merge again"
        )
    (count,) = counts
    report = MergeReport(path=Path(out_dir) / MANIFEST_NAME, shards=[p for _, _, p in found])
    # A killed job's journal is newer than its shard's manifest (the run resumed from it).
    killed.sort(key=lambda entry: entry[2].stat().st_mtime_ns)
    report.interrupted = sorted({f"{k}/{n}" for n, k, _ in killed})
    report.running = sorted({f"{k}/{n}" for n, k, _ in live if n == count})
    present = {index for n, index, _ in found + killed + live if n == count}
    report.missing = [f"{k}/{count}" for k in range(count) if k not in present]
    # Oldest first: the folder's manifest (a plain run in the same folder, an earlier merge:
    # inputs only it holds stay listed), the shard manifests, then killed jobs' journals by
    # age. A later record replaces an earlier one, except that a failure never replaces a
    # success.
    merged: dict[str, dict[str, Any]] = {}
    if report.path.is_file():
        merged = {str(r.get("input")): r for r in read_manifest(report.path)}
    for _, _, path in found + killed:
        for record in read_manifest(path, allow_torn_tail=path.name.endswith(JOURNAL_SUFFIX)):
            key = str(record.get("input"))
            if key not in merged or "error" in merged[key] or "error" not in record:
                merged[key] = record
    lines = [record_line(r) + "\n" for r in merged.values()]
    atomic_write_bytes(report.path, "".join(lines).encode("utf-8"))
    report.records = len(merged)
    report.failed = sum("error" in r for r in merged.values())
    return report
