"""attnviz.io: finding inputs, decoding, naming and writing outputs, the manifest."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnviz.choices import FORMATS
from attnviz.errors import AttnvizError, UsageError
from attnviz.io import (
    MANIFEST_NAME,
    InputItem,
    ManifestWriter,
    atomic_write_bytes,
    create_locked_temp,
    decode_image,
    discover,
    encode_image,
    load_rgb,
    output_path,
    read_manifest,
    remove_stale_temps,
    write_image,
    write_npz,
)
from attnviz.io.files import in_use
from attnviz.io.manifest import remove_stale_journals
from attnviz.io.resume import PreviousRun


def _png(path: Path, color: tuple[int, int, int] = (10, 20, 30), size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def _tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --- discover / output_path ----------------------------------------------------------


def test_discover_mirrors_nested_tree_sorted(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for rel in ["b.png", "a.jpg", "sub/z.png", "sub/deep/c.JPEG", "notes.txt"]:
        _png(root / rel) if not rel.endswith(".txt") else (root / rel).write_text("x")

    items, rejected = discover([root])

    assert rejected == []
    assert [i.relative.as_posix() for i in items] == [
        "a.jpg",
        "b.png",
        "sub/deep/c.JPEG",
        "sub/z.png",
    ]
    assert all(i.path == root / i.relative for i in items)
    out = tmp_path / "out"
    assert output_path(items[2], out, ".png") == out / "sub" / "deep" / "c.png"


def test_discover_glob_matches_name_or_relative_path(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ["a.png", "a.jpg", "cats/b.jpg", "cats/c.png", "dogs/d.jpg"]:
        _png(root / rel)

    by_name, _ = discover([root], pattern="*.png")
    by_path, _ = discover([root], pattern="cats/*.jpg")

    assert [i.relative.as_posix() for i in by_name] == ["a.png", "cats/c.png"]
    assert [i.relative.as_posix() for i in by_path] == ["cats/b.jpg"]


def test_direct_file_taken_whatever_its_suffix(tmp_path: Path) -> None:
    odd = tmp_path / "scan.dat"
    odd.write_bytes(b"whatever")

    items, rejected = discover([odd], pattern="*.png")

    assert items == [InputItem(path=odd, relative=Path("scan.dat"))]
    assert rejected == []


def test_missing_path_rejected(tmp_path: Path) -> None:
    good = _png(tmp_path / "ok.png")
    missing = tmp_path / "nope.jpg"

    items, rejected = discover([missing, good])

    assert [i.path for i in items] == [good]
    assert len(rejected) == 1
    assert rejected[0].path == missing
    assert rejected[0].reason == "no such file or directory"


def test_output_folder_inside_input_folder_is_excluded(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _png(root / "a.png")
    _png(root / "attnviz-out" / "a.png")  # result of an earlier run
    _png(root / "attnviz-out" / "sub" / "b.png")

    items, rejected = discover([root], exclude=root / "attnviz-out")

    assert [i.relative.as_posix() for i in items] == ["a.png"]
    assert rejected == []


def test_file_named_inside_output_folder_is_rejected(tmp_path: Path) -> None:
    out = tmp_path / "out"
    inside = _png(out / "a.png")

    items, rejected = discover([inside], exclude=out)

    assert items == []
    assert [r.path for r in rejected] == [inside]


def test_duplicate_inputs_taken_once(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    a = _png(root / "a.png")
    _png(root / "b.png")

    # The same file directly, via the folder, and via a different spelling.
    items, rejected = discover([a, root, root / ".." / "photos" / "a.png"])

    assert [i.path for i in items] == [a, root / "b.png"]
    assert [(r.reason, r.failed) for r in rejected] == [
        ("given more than once; processed once", False)
    ] * 2


def test_clashing_output_names_rejected_not_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    first = _png(root / "x.jpg")
    second = _png(root / "x.png")

    items, rejected = discover([root])

    assert [i.path for i in items] == [first]
    assert [r.path for r in rejected] == [second]
    assert str(first) in rejected[0].reason


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_directories_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _png(root / "a.png")
    (root / "loop").symlink_to(root, target_is_directory=True)

    items, _ = discover([root])

    assert [i.relative.as_posix() for i in items] == ["a.png"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loops_and_dangling_links_are_rejected_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    good = _png(root / "good.png")
    (root / "a.jpg").symlink_to(root / "b.jpg")
    (root / "b.jpg").symlink_to(root / "a.jpg")
    (root / "gone.png").symlink_to(root / "nowhere.png")
    (root / "dir.jpg").mkdir()  # a folder named like a photo is just walked

    items, rejected = discover([root, root / "a.jpg"])

    assert [i.path for i in items] == [good]
    assert sorted((r.path.name, r.reason) for r in rejected) == [
        ("a.jpg", "symlink loop"),
        ("b.jpg", "symlink loop"),
        ("gone.png", "broken symlink"),
    ]


@pytest.mark.parametrize("relative", ["../evil.jpg", "a/../../evil.jpg", "/abs/evil.jpg", "."])
def test_output_path_never_escapes(tmp_path: Path, relative: str) -> None:
    item = InputItem(path=tmp_path / "evil.jpg", relative=Path(relative))

    with pytest.raises(AttnvizError, match="evil.jpg|unsafe"):
        output_path(item, tmp_path / "out", ".png")


def test_output_path_replaces_suffix(tmp_path: Path) -> None:
    item = InputItem(path=Path("x/My.Photo.JPG"), relative=Path("sub/My.Photo.JPG"))

    assert output_path(item, tmp_path, ".png") == tmp_path / "sub" / "My.Photo.png"
    assert output_path(item, tmp_path, "webp") == tmp_path / "sub" / "My.Photo.webp"


# --- load_rgb ------------------------------------------------------------------------


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high: left half red, right half blue.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    rgb = load_rgb(path)

    assert rgb.shape == (40, 20, 3)
    # Clockwise: the left (red) column ends up on top.
    assert rgb[5, 10, 0] > 200 and rgb[5, 10, 2] < 60
    assert rgb[35, 10, 2] > 200 and rgb[35, 10, 0] < 60


def test_result_is_contiguous_uint8_rgb(tmp_path: Path) -> None:
    rgb = load_rgb(_png(tmp_path / "a.png", (1, 2, 3)))

    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert rgb.flags.c_contiguous
    assert tuple(rgb[0, 0]) == (1, 2, 3)


def test_rgba_composited_on_grey(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 255, 255, 0)  # fully transparent white
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)

    rgb = load_rgb(path)

    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[0, 1]) == (128, 128, 128)


def test_16bit_grayscale_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")

    rgb = load_rgb(path)

    assert rgb.shape == (1, 3, 3)
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    assert abs(int(rgb[0, 1, 0]) - 128) <= 1
    assert tuple(rgb[0, 2]) == (255, 255, 255)


def test_float_image_scaled(tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)

    rgb = load_rgb(path)

    assert [int(v) for v in rgb[0, :, 0]] == [0, 128, 255]


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    img.save(path, transparency=1)

    rgb = load_rgb(path)

    assert tuple(rgb[0, 0]) == (0, 255, 0)
    assert tuple(rgb[0, 1]) == (128, 128, 128)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)  # red

    rgb = load_rgb(path)

    r, g, b = (int(v) for v in rgb[4, 4])
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)

    rgb = load_rgb(path)

    assert tuple(rgb[0, 0]) == (255, 0, 0)


def _truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_text("this is not a picture"),
        lambda p: p.write_bytes(b""),
        _truncated_jpeg,
        lambda _p: None,  # missing
    ],
    ids=["text-file", "zero-bytes", "truncated", "missing"],
)
def test_undecodable_raises_attnviz_error_naming_file(tmp_path: Path, make) -> None:
    path = tmp_path / "broken.jpg"
    make(path)

    with pytest.raises(AttnvizError) as info:
        load_rgb(path)

    message = str(info.value)
    assert str(path) in message
    assert "cannot decode image" in message
    assert "\n" not in message


def test_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    _claim_size(_png(path, size=4), 60000, 60000)

    with pytest.raises(AttnvizError, match=r"60000x60000 .*over the limit.*--max-pixels"):
        load_rgb(path)


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = _png(tmp_path / "small.png", size=64)

    with pytest.raises(AttnvizError, match="over the limit"):
        load_rgb(path, max_pixels=64 * 64 - 1)
    assert load_rgb(path, max_pixels=64 * 64).shape == (64, 64, 3)


def _claim_size(path: Path, width: int, height: int) -> Path:
    """Rewrite a PNG's IHDR so its header claims width x height (CRC fixed up)."""
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_animated_image_notes_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)

    decoded = decode_image(path)

    assert decoded.notes == ["animated (3 frames): used the first frame"]
    assert [int(v) for v in decoded.rgb[0, 0]] == pytest.approx([255, 0, 0], abs=8)


# --- writing -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_keeps_colours(fmt: str) -> None:
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255

    data = encode_image(red, fmt)
    back = np.array(Image.open(io.BytesIO(data)).convert("RGB"))

    r, g, b = (int(v) for v in back[8, 8])
    assert r > 240 and g < 15 and b < 15  # a BGR mix-up would come out blue


def test_encode_png_lossless_and_deterministic() -> None:
    img = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)

    data = encode_image(img, "png")

    assert data == encode_image(img, "png")
    assert np.array_equal(np.array(Image.open(io.BytesIO(data))), img)


def test_encode_unknown_format_is_usage_error() -> None:
    with pytest.raises(UsageError, match="png, jpg, webp"):
        encode_image(np.zeros((2, 2, 3), np.uint8), "gif")


def test_atomic_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"

    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")

    assert target.read_bytes() == b"new"
    assert _tmp_files(tmp_path) == []
    assert list(target.parent.iterdir()) == [target]


def test_write_image_writes_decodable_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.png"
    img = np.full((3, 5, 3), (0, 128, 255), np.uint8)

    write_image(target, img, "png")

    assert np.array_equal(np.array(Image.open(target)), img)


def test_failed_replace_keeps_old_file_and_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def disk_full(_src: str, _dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)

    with pytest.raises(AttnvizError) as info:
        atomic_write_bytes(target, b"new")

    assert str(target) in str(info.value)
    assert os.strerror(errno.ENOSPC) in str(info.value)
    assert target.read_bytes() == b"old"
    assert _tmp_files(tmp_path) == []


def test_write_under_a_file_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"i am a file")
    target = blocker / "out.png"

    with pytest.raises(AttnvizError, match="cannot write"):
        write_image(target, np.zeros((2, 2, 3), np.uint8), "png")

    assert blocker.read_bytes() == b"i am a file"
    assert _tmp_files(tmp_path) == []


def test_interrupted_write_leaves_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(_fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "out.png", b"data")

    assert list(tmp_path.iterdir()) == []


def test_write_npz_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "maps" / "a.npz"
    arrays = {
        "gates.2": np.arange(6, dtype=np.float64).reshape(2, 3) / 7,
        "file": np.ones(3, dtype=np.int64),  # would clash with np.savez's own argument
    }

    write_npz(target, arrays)
    first = target.read_bytes()
    write_npz(target, arrays)

    with np.load(target) as npz:
        assert sorted(npz.files) == ["file", "gates.2"]
        assert npz["gates.2"].dtype == np.float32
        np.testing.assert_allclose(npz["gates.2"], arrays["gates.2"], rtol=1e-6)
        assert npz["file"].dtype == np.float32
    assert target.read_bytes() == first  # byte-identical across runs


# --- manifest ------------------------------------------------------------------------


def test_manifest_writes_json_lines_in_order(tmp_path: Path) -> None:
    records = [
        {"input": "z.jpg", "output": "z.png", "score": 0.5},
        {"input": "a.jpg", "output": "a.png", "label": "café"},
        {"input": "m.jpg", "error": "cannot decode"},
    ]

    with ManifestWriter(tmp_path) as manifest:
        for rec in records:
            manifest.add(rec)
        assert not (tmp_path / MANIFEST_NAME).exists()  # written only on close

    path = tmp_path / MANIFEST_NAME
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert lines[0] == '{"input":"z.jpg","output":"z.png","score":0.5}'
    assert "café" in lines[1]
    assert read_manifest(path) == records
    assert _tmp_files(tmp_path) == []


def test_manifest_written_even_when_run_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ManifestWriter(tmp_path) as manifest:
        manifest.add({"input": "a.jpg"})
        raise RuntimeError("boom")

    assert read_manifest(tmp_path / MANIFEST_NAME) == [{"input": "a.jpg"}]


def test_manifest_rejects_unserialisable_record_at_add(tmp_path: Path) -> None:
    manifest = ManifestWriter(tmp_path)

    with pytest.raises(TypeError):
        manifest.add({"bad": object()})


def test_read_manifest_reports_bad_line(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_text('{"ok": 1}\nnot json\n', encoding="utf-8")

    with pytest.raises(AttnvizError, match=":2:"):
        read_manifest(path)


def test_encode_oversized_webp_gives_clear_error() -> None:
    with pytest.raises(AttnvizError, match="use png"):
        encode_image(np.zeros((20000, 2, 3), np.uint8), "webp")


# --- outputs never leave the output folder; resume trusts only what is inside it --------


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_symlinked_folder_inside_out_cannot_carry_a_write_outside(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    item = InputItem(path=tmp_path / "in" / "sub" / "a.jpg", relative=Path("sub/a.jpg"))

    with pytest.raises(AttnvizError, match="links outside"):
        output_path(item, out, ".png")


def _stat(source: str, size: int = 1) -> dict:
    return {"path": source, "bytes": size, "mtime_ns": 7}


def _record(name: str, figure: str) -> dict:
    return {
        "input": name,
        "outputs": {"figure": figure},
        "input_stat": _stat(name),
        "settings": "k",
    }


@pytest.mark.parametrize("figure", ["/etc/hostname", "../outside.png", "link/outside.png"])
def test_resume_ignores_manifest_entries_that_point_outside_out(
    tmp_path: Path, figure: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _png(tmp_path / "outside.png")
    (out / "link").symlink_to(tmp_path, target_is_directory=True)
    with ManifestWriter(out) as manifest:
        manifest.add(_record("a.jpg", figure))
        manifest.add(_record("b.jpg", "b.png"))
    _png(out / "b.png")

    previous, note = PreviousRun.load(out)

    assert note is None
    assert previous.up_to_date(_stat("a.jpg"), "k") is None
    assert previous.up_to_date(_stat("b.jpg"), "k") is not None
    assert previous.up_to_date(_stat("b.jpg", size=2), "k") is None  # the input changed
    assert previous.up_to_date(_stat("b.jpg"), "other") is None  # other settings


def test_an_unreadable_manifest_line_is_skipped_with_a_note(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json\n")

    previous, note = PreviousRun.load(tmp_path)

    assert note is not None and f"{MANIFEST_NAME}:1: invalid manifest line" in note
    assert previous.others(set()) == []


def test_a_torn_line_costs_only_its_own_input(tmp_path: Path) -> None:
    """A half-written line (another tool's crash) does not make the good records useless."""
    out = tmp_path / "out"
    out.mkdir()
    with ManifestWriter(out) as manifest:
        manifest.add(_record("a.jpg", "a.png"))
        manifest.add(_record("b.jpg", "b.png"))
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    (out / MANIFEST_NAME).write_text(lines[0] + "\n" + '{"input": "c.jp' + "\n" + lines[1] + "\n")
    _png(out / "a.png")
    _png(out / "b.png")

    previous, note = PreviousRun.load(out)

    assert note is not None and f"{MANIFEST_NAME}:2: invalid manifest line" in note
    assert previous.up_to_date(_stat("a.jpg"), "k") is not None
    assert previous.up_to_date(_stat("b.jpg"), "k") is not None


def test_non_utf8_names_round_trip_through_the_manifest(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.jpg")
    with ManifestWriter(tmp_path) as manifest:
        manifest.add({"input": name})

    raw = (tmp_path / MANIFEST_NAME).read_bytes()

    raw.decode("utf-8")  # valid UTF-8 on disk
    assert read_manifest(tmp_path / MANIFEST_NAME) == [{"input": name}]


def test_temporary_files_of_killed_runs_are_removed_those_in_use_kept(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    fd, live = create_locked_temp(tmp_path, "b.png")  # a live writer holds its lock
    dead = tmp_path / "sub" / ".attnviz-a.png.xyz.tmp"  # nobody holds it: a killed run's
    unrelated = tmp_path / ".other.tmp"
    for path in (dead, unrelated):
        path.write_bytes(b"partial")

    try:
        assert remove_stale_temps(tmp_path) == 1
        assert not dead.exists() and live.exists() and unrelated.exists()
    finally:
        os.close(fd)


def test_a_temp_swept_before_its_writer_could_lock_it_is_replaced_by_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another shard's sweep may run between mkstemp and flock: the writer must notice."""
    import tempfile

    real_mkstemp = tempfile.mkstemp
    calls = []

    def mkstemp_then_sweep(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)  # type: ignore[call-overload]
        calls.append(name)
        if len(calls) == 1:
            assert remove_stale_temps(tmp_path) == 1  # not locked yet: taken for a leftover
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_sweep)
    fd, path = create_locked_temp(tmp_path, "a.png")
    try:
        assert len(calls) == 2 and str(path) == calls[1]
        assert path.exists() and in_use(path)
        assert remove_stale_temps(tmp_path) == 0  # a later sweep leaves it alone
        assert _tmp_files(tmp_path) == [path]
    finally:
        os.close(fd)


def test_a_very_long_file_name_can_still_be_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 251 + ".png")

    write_image(target, np.zeros((4, 4, 3), np.uint8), "png")

    assert target.is_file() and not _tmp_files(tmp_path)


def test_a_killed_runs_journal_is_resumed_from_even_with_a_torn_last_line(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    killed = tmp_path / ".attnviz-manifest.abc123.journal.tmp"  # nobody holds its lock
    good = json.dumps(_record("a.jpg", "a.png"))
    killed.write_text(good + "\n" + good[:20])  # killed in the middle of the second line
    live = ManifestWriter(tmp_path)  # a run still writing: its journal is not read
    live.add(_record("b.jpg", "a.png"))

    previous, note = PreviousRun.load(tmp_path)

    assert note is None
    assert previous.up_to_date(_stat("a.jpg"), "k") is not None
    assert previous.still_present("b.jpg") is None
    assert remove_stale_temps(tmp_path) == 0  # a journal waits for the run resuming it
    remove_stale_journals(tmp_path)
    assert not killed.exists() and live._journal is not None and live._journal.exists()
    live.close()


def test_the_manifest_appears_only_when_complete(tmp_path: Path) -> None:
    manifest = ManifestWriter(tmp_path)
    manifest.add({"input": "a.jpg"})

    assert not (tmp_path / MANIFEST_NAME).exists()  # still a journal
    manifest.close()
    assert read_manifest(tmp_path / MANIFEST_NAME) == [{"input": "a.jpg"}]
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]


# --- decoding large photos at a reduced scale -------------------------------------------


def _big_jpeg(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=90)
    return path


def test_large_jpeg_decodes_at_the_smallest_scale_that_still_covers_min_side(
    tmp_path: Path,
) -> None:
    path = _big_jpeg(tmp_path / "big.jpg", (4000, 3000))
    full = decode_image(path)
    reduced = decode_image(path, min_side=320)
    # 3000 / 8 = 375 >= 320, while 1/16 is not a JPEG scale: an eighth of each side.
    assert reduced.rgb.shape == (375, 500, 3) and full.rgb.shape == (3000, 4000, 3)
    assert reduced.size == full.size == (4000, 3000) and reduced.original_hw == (3000, 4000)
    # The same picture, not a crop: a full decode shrunk the same way looks alike.
    shrunk = np.asarray(Image.fromarray(full.rgb).resize((500, 375), Image.BOX), np.int16)
    assert np.abs(shrunk - reduced.rgb).mean() < 3


def test_reduced_decoding_leaves_small_photos_pngs_and_rotations_right(tmp_path: Path) -> None:
    small = _big_jpeg(tmp_path / "small.jpg", (600, 400))
    assert decode_image(small, min_side=320).rgb.shape == (400, 600, 3)  # not 2x larger
    png = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), (1, 2, 3)).save(png)
    assert decode_image(png, min_side=100).rgb.shape == (1000, 2000, 3)  # JPEG only
    turned = decode_image(_big_jpeg(tmp_path / "turned.jpg", (4000, 3000), 6), min_side=320)
    assert turned.rgb.shape == (500, 375, 3) and turned.size == (3000, 4000)


def test_a_reduced_photo_is_recorded_at_its_real_size(tmp_path: Path) -> None:
    from tests.conftest import attnviz

    path = _big_jpeg(tmp_path / "big.jpg", (4000, 3000))
    out = tmp_path / "out"
    code, output = attnviz("run", path, "--out", out)
    assert code == 0, output
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert record["image_size"] == [4000, 3000]
    assert 0 < record["maps"]["attention.pool"]["peak_xy"][0] < 4000
    with Image.open(out / "big.png") as figure:
        assert figure.height < 450  # one row of 320-pixel panels, not a 3000-pixel one


def test_hidden_folders_are_not_walked(tmp_path: Path) -> None:
    _png(tmp_path / "photos" / "a.png")
    _png(tmp_path / "photos" / ".thumbs" / "a.png")  # an older output folder's thumbnails
    _png(tmp_path / "photos" / ".git" / "logo.png")
    items, rejected = discover([tmp_path / "photos"])
    assert [i.relative.as_posix() for i in items] == ["a.png"] and not rejected


def test_a_line_torn_inside_a_character_costs_only_that_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with ManifestWriter(out) as manifest:
        manifest.add(_record("a.jpg", "a.png"))
    torn = '{"input": "写真.jpg"}'.encode()[:14]  # cut inside a three-byte character
    with (out / MANIFEST_NAME).open("ab") as f:
        f.write(torn + b"\n")
    _png(out / "a.png")

    previous, note = PreviousRun.load(out)

    assert note is not None and f"{MANIFEST_NAME}:2: invalid manifest line" in note
    assert previous.up_to_date(_stat("a.jpg"), "k") is not None


def test_the_public_readers_and_writers_take_a_str_path_as_well_as_a_path(tmp_path: Path) -> None:
    from attnviz.io import load_rgb, write_image, write_npz

    image = np.full((8, 12, 3), 200, dtype=np.uint8)
    write_image(str(tmp_path / "figure.png"), image, "png")
    assert np.array_equal(load_rgb(str(tmp_path / "figure.png")), image)
    write_npz(str(tmp_path / "maps.npz"), {"m": np.ones((2, 2))})
    assert np.load(tmp_path / "maps.npz")["m"].shape == (2, 2)


def test_every_name_attnviz_io_lists_resolves_from_the_module_that_holds_it() -> None:
    import importlib

    import attnviz.io as io

    assert set(io.__all__) == set(io._HOME_OF) and set(io.__all__) <= set(dir(io))
    for name in io.__all__:
        home = importlib.import_module(f"attnviz.io.{io._HOME_OF[name]}")
        assert getattr(io, name) is getattr(home, name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        io.nope  # noqa: B018


@pytest.mark.subprocess
def test_the_gallery_reads_large_figures_whatever_was_imported_before_it() -> None:
    import subprocess
    import sys

    code = "import attnviz.render.gallery; from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "None", done.stderr
