"""A folder of hostile and odd inputs, generated here, through the real CLI in one run.

Every bad input gets exactly one line (file and reason) and no traceback; every good input
still gets its triptych; the exit code says that some inputs failed.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from attnviz.cli import app
from tests.conftest import write_photo

NON_UTF8_NAME = os.fsdecode(b"caf\xe9-latin1.jpg")
LONG_NAME = "long-" + "n" * 240 + ".jpg"


def _jpeg_bytes(size: tuple[int, int] = (96, 64), seed: int = 0) -> bytes:
    w, h = size
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _truncated_jpeg(p: Path) -> None:
    data = _jpeg_bytes()
    p.write_bytes(data[: len(data) // 2])


def _truncated_png(p: Path) -> None:
    write_photo(p, (96, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _corrupt_entropy_jpeg(p: Path) -> None:
    """Valid headers, then scan data with bytes overwritten by 0xFF (bogus markers)."""
    data = bytearray(_jpeg_bytes())
    scan = data.index(b"\xff\xda") + 40
    for k in range(scan, len(data) - 10, 37):
        data[k] = 0xFF if data[k] != 0xFF else 0x00
    p.write_bytes(bytes(data))


def _claims_60000_square(p: Path) -> None:
    """A tiny PNG whose header says 60000x60000: a decompression bomb's signature."""
    write_photo(p, (8, 8))
    data = bytearray(p.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 60000, 60000)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    p.write_bytes(bytes(data))


def _save(mode: str, size: tuple[int, int], **kwargs: object) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        rgb = Image.open(write_photo(p.with_suffix(".src.bmp"), size))
        p.with_suffix(".src.bmp").unlink()
        if mode == "I;16":
            img = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
        elif mode == "LA":
            img = rgb.convert("LA")
            img.putalpha(Image.linear_gradient("L").resize(size))
        elif mode == "RGBA":
            img = rgb.convert("RGBA")
            img.putalpha(Image.linear_gradient("L").resize(size))
        elif mode == "P":
            img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
            img.info["transparency"] = 0
        else:
            img = rgb.convert(mode)
        img.save(p, **kwargs)

    return make


def _png48(p: Path) -> None:
    """16 bits per channel RGB, which Pillow cannot write but cameras and OpenCV do."""
    ramp = np.linspace(0, 65535, 96 * 64 * 3).reshape(64, 96, 3).astype(np.uint16)
    assert cv2.imwrite(str(p), ramp)


def _animated() -> Callable[[Path], None]:
    def make(p: Path) -> None:
        frames = [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (30, 30, 200))]
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=40, loop=0)

    return make


def _exif_rotated(p: Path) -> None:
    """Stored 96 wide x 64 tall with EXIF orientation 6: shown upright it is 64 x 96."""
    img = Image.open(io.BytesIO(_jpeg_bytes((96, 64))))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(p, exif=exif.tobytes())


# name -> (how to make it, expected: "ok", "note: <text>" or a fragment of the failure reason)
CORPUS: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero-bytes.jpg": (lambda p: p.write_bytes(b""), "not a recognised image format"),
    "page.jpg": (lambda p: p.write_text("<html><body>404</body></html>"), "not a recognised"),
    "truncated-jpeg.jpg": (_truncated_jpeg, "truncated"),
    "truncated-png.png": (_truncated_png, "cannot decode image"),
    "corrupt-entropy.jpg": (_corrupt_entropy_jpeg, "broken data stream"),
    "rgb48.png": (_png48, "ok"),
    "grey16-png.png": (_save("I;16", (96, 64)), "ok"),
    "grey16-tiff.tif": (_save("I;16", (96, 64)), "ok"),
    "cmyk.jpg": (_save("CMYK", (96, 64)), "ok"),
    "rgba.png": (_save("RGBA", (96, 64)), "ok"),
    "la.png": (_save("LA", (96, 64)), "ok"),
    "palette.png": (_save("P", (96, 64)), "ok"),
    "anim-gif.gif": (_animated(), "note: animated (2 frames): used the first frame"),
    "anim-webp.webp": (_animated(), "note: animated (2 frames): used the first frame"),
    "one-pixel.png": (lambda p: write_photo(p, (1, 1)), "ok"),
    "tall-1x5000.png": (lambda p: write_photo(p, (1, 5000)), "ok"),
    "wide-5000x1.png": (lambda p: write_photo(p, (5000, 1)), "ok"),
    "exif-rotated.jpg": (_exif_rotated, "ok"),
    "bomb.png": (
        _claims_60000_square,
        "60000x60000 is 3,600,000,000 pixels, over the limit of 160,000,000",
    ),
    "dir.jpg/inside.png": (lambda p: write_photo(p, (64, 64)), "ok"),
    NON_UTF8_NAME: (lambda p: write_photo(p, (64, 48)), "ok"),
    LONG_NAME: (lambda p: write_photo(p, (64, 48)), "ok"),
    "clash.jpg": (lambda p: write_photo(p, (64, 48)), "ok"),
    "clash.png": (lambda p: write_photo(p, (64, 48)), "output name clashes with"),
}


def _links(root: Path) -> None:
    """Symlinks: a loop between two names, and one pointing nowhere."""
    (root / "loop-a.jpg").symlink_to(root / "loop-b.jpg")
    (root / "loop-b.jpg").symlink_to(root / "loop-a.jpg")
    (root / "dangling.png").symlink_to(root / "nowhere.png")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int, str]:
    root = tmp_path_factory.mktemp("hostile") / "inputs"
    for name, (make, _) in CORPUS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        make(root / name)
    _links(root)
    out = root.parent / "out"
    stale = write_photo(out / "earlier.png", (32, 32))  # an old output given as an input
    args = ["run", str(root), str(root / "exif-rotated.jpg"), str(stale), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    crash = result.exception
    assert crash is None or isinstance(crash, SystemExit), repr(crash)  # exit codes only
    return root, out, result.exit_code, result.output


def _lines_about(output: str, name: str) -> list[str]:
    shown = os.fsencode(name).decode("utf-8", "backslashreplace")
    return [ln for ln in output.splitlines() if shown in ln and ln.startswith(("failed", "note"))]


def test_some_inputs_failed_so_the_exit_code_is_1_and_nothing_crashed(hostile_run) -> None:
    _, _, code, output = hostile_run
    assert code == 1, output


@pytest.mark.parametrize("name", [n for n, (_, o) in CORPUS.items() if o != "ok"])
def test_each_bad_or_odd_input_gets_exactly_one_line_with_its_reason(hostile_run, name) -> None:
    root, _, _, output = hostile_run
    expected = CORPUS[name][1].removeprefix("note: ")
    lines = _lines_about(output, Path(name).name)
    assert len(lines) == 1, (name, lines)
    assert expected in lines[0]
    assert lines[0].startswith("note" if CORPUS[name][1].startswith("note") else "failed")


def test_symlink_loops_and_dangling_links_get_one_line_each(hostile_run) -> None:
    _, _, _, output = hostile_run
    for name, reason in {"loop-a.jpg": "symlink loop", "dangling.png": "broken"}.items():
        lines = _lines_about(output, name)
        assert len(lines) == 1 and reason in lines[0], (name, lines)


def test_the_same_file_given_twice_is_processed_once_and_said_so(hostile_run) -> None:
    root, out, _, output = hostile_run
    lines = _lines_about(output, "exif-rotated.jpg")
    assert len(lines) == 1 and "given more than once; processed once" in lines[0]
    assert (out / "exif-rotated.png").is_file()


def test_an_input_inside_the_output_folder_is_not_fed_back_in(hostile_run) -> None:
    _, out, _, output = hostile_run
    lines = _lines_about(output, "earlier.png")
    assert len(lines) == 1 and "inside the output folder" in lines[0]


@pytest.mark.parametrize(
    "name", [n for n, (_, o) in CORPUS.items() if o != "ok" and "note" not in o]
)
def test_failed_inputs_write_no_output(hostile_run, name) -> None:
    _, out, _, _ = hostile_run
    if name.startswith("clash."):
        return  # the first of the clashing pair owns clash.png
    assert not (out / Path(name).with_suffix(".png")).exists()


@pytest.mark.parametrize("name", [n for n, (_, o) in CORPUS.items() if o == "ok" or "note" in o])
def test_every_good_input_still_gets_a_complete_triptych(hostile_run, name) -> None:
    _, out, _, _ = hostile_run
    figure = out / Path(name).with_suffix(".png")
    with Image.open(figure) as img:
        img.load()  # a complete, decodable file
        # Extreme shapes are letterboxed: the figure stays a sensible size.
        assert 100 < img.width < 8000 and 100 < img.height < 1000, img.size


def test_exif_rotated_photo_is_shown_upright(hostile_run) -> None:
    _, out, _, _ = hostile_run
    record = next(r for r in _manifest(out) if r["input"].endswith("exif-rotated.jpg"))
    assert record["image_size"] == [64, 96]


def test_manifest_is_valid_utf8_json_and_keeps_the_non_utf8_name_exactly(hostile_run) -> None:
    root, out, _, _ = hostile_run
    records = _manifest(out)
    assert str(root / NON_UTF8_NAME) in {r["input"] for r in records}
    assert all("error" in r or (out / r["outputs"]["figure"]).is_file() for r in records)


def test_no_temporary_or_empty_files_are_left(hostile_run) -> None:
    _, out, _, _ = hostile_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp") or p.stat().st_size == 0]


def _manifest(out: Path) -> list[dict]:
    text = (out / "manifest.jsonl").read_bytes().decode("utf-8")  # strict: must be UTF-8
    return [json.loads(line) for line in text.splitlines()]
