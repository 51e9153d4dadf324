"""Spec of --shard K/N and `attnviz merge`: N independent jobs cover a data set exactly once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from attnviz.errors import UsageError
from attnviz.io import create_locked_temp
from attnviz.io.manifest import JOURNAL_SUFFIX
from attnviz.io.shards import Shard
from tests.conftest import attnviz, summary_count, write_photo


def manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("text", ["4/4", "1/0", "a/3", "2", "-1/3", "1/2/3"])
def test_bad_shard_specs_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--shard"):
        Shard.parse(text)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_complete_and_balanced(count: int) -> None:
    keys = [f"train/class_{i % 13}/img_{i:05d}.jpg" for i in range(3000)]
    shards = [Shard(k, count) for k in range(count)]
    owners = [[s.index for s in shards if s.holds(key)] for key in keys]
    assert all(len(o) == 1 for o in owners)  # each input in exactly one shard
    sizes = [sum(o == [k] for o in owners) for k in range(count)]
    assert min(sizes) > 0.8 * len(keys) / count


def test_an_added_input_does_not_move_the_others() -> None:
    shard = Shard(1, 4)
    before = {f"img_{i}.jpg": shard.holds(f"img_{i}.jpg") for i in range(100)}
    assert all(shard.holds(k) == v for k, v in before.items())  # a pure function of the name


def test_shard_jobs_cover_a_folder_once_and_merge(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(7):
        write_photo(photos / f"sub{i % 2}" / f"p{i}.jpg", (48, 40), seed=i)
    write_photo(photos / "bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    for k in range(3):
        code, output = attnviz("run", photos, "--out", out, "--shard", f"{k}/3")
        assert code in (0, 1), output  # the shard that holds bad.jpg fails it
    shard_files = sorted(p.name for p in out.glob("manifest.shard-*"))
    assert shard_files == [f"manifest.shard-{k}-of-3.jsonl" for k in range(3)]
    inputs = [r["input"] for k in range(3) for r in manifest(out / shard_files[k])]
    assert sorted(inputs) == sorted(str(p) for p in photos.rglob("*.jpg"))  # once each
    assert len(list(out.rglob("*.png"))) == 7
    assert not (out / "manifest.jsonl").exists()

    code, output = attnviz("merge", out)
    assert code == 0, output
    merged = manifest(out / "manifest.jsonl")
    assert len(merged) == 8 and sum("error" in r for r in merged) == 1
    # The merged manifest is what an unsharded rerun resumes from.
    code, output = attnviz("run", photos, "--out", out)
    assert code == 1 and summary_count(output, "processed") == 0, output
    assert summary_count(output, "up to date") == 7


def test_a_shard_resumes_from_its_own_manifest(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(4):
        write_photo(photos / f"p{i}.jpg", (48, 40), seed=i)
    out = tmp_path / "out"
    assert attnviz("run", photos, "--out", out, "--shard", "0/2")[0] == 0
    assert attnviz("run", photos, "--out", out, "--shard", "1/2")[0] == 0
    code, output = attnviz("run", photos, "--out", out, "--shard", "0/2")
    assert code == 0 and summary_count(output, "processed") == 0, output


def test_merge_says_what_is_missing_or_inconsistent(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, output = attnviz("merge", out)
    assert code == 1 and "no shard manifests" in output
    (out / "manifest.shard-0-of-3.jsonl").write_text('{"input": "a.jpg", "error": "x"}\n')
    code, output = attnviz("merge", out)
    # Merged, but the job is not done: the missing shards are named and the exit says so.
    assert code == 1 and "1/3, 2/3" in output
    assert len(manifest(out / "manifest.jsonl")) == 1
    (out / "manifest.shard-0-of-2.jsonl").write_text("")
    code, output = attnviz("merge", out)
    assert code == 1 and "different splits" in output


def test_merge_takes_a_killed_shards_journal_and_names_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.shard-0-of-2.jsonl").write_text('{"input": "a.jpg", "outputs": {}}\n')
    # Shard 1 was killed mid-way: its journal holds one finished record and a torn line.
    journal = out / ".attnviz-shard-1-of-2.k1ll3d.journal.tmp"
    journal.write_text('{"input": "b.jpg", "outputs": {}}\n{"input": "c.j')
    code, output = attnviz("merge", out)
    assert code == 1, output
    assert "killed before the end" in output and "1/2" in output
    assert [r["input"] for r in manifest(out / "manifest.jsonl")] == ["a.jpg", "b.jpg"]
    assert journal.exists()  # the shard's own rerun resumes from it

    # A job still writing its journal is not read, and the merge says it is running.
    journal.unlink()
    fd, live = create_locked_temp(out, "shard-1-of-2", JOURNAL_SUFFIX)
    try:
        os.write(fd, b'{"input": "d.jpg", "outputs": {}}\n')
        code, output = attnviz("merge", out)
    finally:
        os.close(fd)
    assert code == 1 and "still running: shard(s) 1/2" in output, output
    assert "no manifest yet" not in output
    assert "d.jpg" not in (out / "manifest.jsonl").read_text()


def test_shards_refuse_a_global_norm_and_write_their_own_stats(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(4):
        write_photo(photos / f"p{i}.jpg", seed=i)
    out = tmp_path / "out"
    # Each job would find its own range: the same colour would mean different values.
    code, output = attnviz("run", photos, "--out", out, "--shard", "0/2", "--norm", "global")
    assert code == 2 and "--norm global with --shard" in output
    assert not out.exists()

    stats = tmp_path / "maps.csv"
    for k in range(2):
        code, output = attnviz("run", photos, "--out", out, "--shard", f"{k}/2", "--stats", stats)
        assert code == 0, output
    # Parallel jobs given the same --stats path never overwrite each other's rows.
    rows = [
        line.split(",")[0]
        for k in range(2)
        for line in (tmp_path / f"maps.shard-{k}-of-2.csv").read_text().splitlines()[1:]
    ]
    assert sorted(Path(r).name for r in rows) == [f"p{i}.jpg" for i in range(4)]
    assert not stats.exists()


def test_merge_keeps_records_of_a_plain_run_in_the_same_folder(tmp_path: Path) -> None:
    early, photos = tmp_path / "early", tmp_path / "photos"
    write_photo(early / "first.jpg", seed=9)
    for i in range(3):
        write_photo(photos / f"p{i}.jpg", seed=i)
    out = tmp_path / "out"
    assert attnviz("run", early, "--out", out)[0] == 0  # a plain run first
    for k in range(2):
        assert attnviz("run", photos, "--out", out, "--shard", f"{k}/2")[0] == 0
    code, output = attnviz("merge", out)
    assert code == 0, output
    names = sorted(Path(r["input"]).name for r in manifest(out / "manifest.jsonl"))
    assert names == ["first.jpg", "p0.jpg", "p1.jpg", "p2.jpg"]
    code, output = attnviz("merge", out)  # merging again changes nothing
    assert code == 0 and len(manifest(out / "manifest.jsonl")) == 4


def test_merge_takes_each_inputs_newest_record_but_never_a_failure_over_a_success(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # An earlier merge left these; the shards have run again since.
    (out / "manifest.jsonl").write_text(
        '{"input": "a.jpg", "outputs": {"figure": "old-a.png"}}\n'
        '{"input": "y.jpg", "outputs": {"figure": "y.png"}}\n'
        '{"input": "z.jpg", "outputs": {"figure": "z.png"}}\n'
    )
    (out / "manifest.shard-0-of-2.jsonl").write_text(
        '{"input": "a.jpg", "outputs": {"figure": "a.png"}}\n'
        '{"input": "c.jpg", "outputs": {"figure": "c.png"}}\n'
    )
    (out / "manifest.shard-1-of-2.jsonl").write_text(
        '{"input": "b.jpg", "outputs": {"figure": "b.png"}}\n'
        '{"input": "y.jpg", "error": "out of memory"}\n'
    )
    # Shard 1 was rerun and killed: its journal is newer than its manifest.
    journal = out / ".attnviz-shard-1-of-2.k1ll3d.journal.tmp"
    journal.write_text(
        '{"input": "b.jpg", "outputs": {"figure": "b-rerun.png"}}\n'
        '{"input": "c.jpg", "error": "cannot decode"}\n'
    )
    code, output = attnviz("merge", out)
    assert code == 1 and "1/2" in output, output  # the killed shard is named
    records = {r["input"]: r for r in manifest(out / "manifest.jsonl")}
    assert records["a.jpg"]["outputs"] == {"figure": "a.png"}  # a shard's beats the folder's
    assert records["b.jpg"]["outputs"] == {"figure": "b-rerun.png"}  # the journal is newest
    assert "error" not in records["c.jpg"]  # a failure never replaces a success,
    assert records["y.jpg"]["outputs"] == {"figure": "y.png"}  # not even the folder's
    assert records["z.jpg"]["outputs"] == {"figure": "z.png"}  # only the folder had it
