"""Videos in, videos out: frame sources, the atomic video and GIF writers, process_video."""

from __future__ import annotations

import csv
import json
import math
import signal
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from attnviz.engine.figures import render_figure
from attnviz.engine.options import RunOptions
from attnviz.engine.runner import BatchRunner, make_runner
from attnviz.engine.stopping import GracefulStop
from attnviz.engine.video import VideoStopped, process_video
from attnviz.errors import AttnvizError, UsageError
from attnviz.io.inputs import InputItem, discover
from attnviz.io.video import (
    DEFAULT_FPS,
    GIF_MAX_FRAMES,
    FrameFolder,
    GifWriter,
    VideoFile,
    VideoWriter,
    expected_frames,
    is_video,
    natural_key,
    open_frames,
)
from attnviz.models import load_model

FPS = 12.0
W, H = 64, 48
N = 12


def _frame(i: int, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """RGB frame i: grey level 20*i in the top-left block (so its index reads back through
    lossy codecs), a pure red block top-right (catches BGR/RGB swaps), a moving disc."""
    w, h = size
    frame = np.full((h, w, 3), 60, np.uint8)
    frame[:16, :16] = 20 * i
    frame[:16, -16:] = (255, 0, 0)
    cv2.circle(frame, (8 + 4 * i, h - 14), 8, (0, 200, 255), -1)
    return frame


def _index_of(frame: np.ndarray) -> int:
    return round(float(frame[4:12, 4:12].mean()) / 20)


def _write_video(path: Path, fourcc: str, n: int = N, fps: float = FPS) -> Path:
    """A short clip written with OpenCV directly (BGR), independent of attnviz's writer."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (W, H))
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc}"
    for i in range(n):
        writer.write(cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _jpeg_spans(avi: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each frame's JPEG data in an MJPG AVI ('00dc' chunks)."""
    spans, at = [], 0
    while (at := avi.find(b"00dc", at)) >= 0:
        size = int.from_bytes(avi[at + 4 : at + 8], "little")
        if avi[at + 8 : at + 10] == b"\xff\xd8":  # the chunk holds a JPEG, not an index entry
            spans.append((at + 8, size))
        at += 4
    return spans


def _damaged_avi(tmp_path: Path, bad: set[int]) -> Path:
    """The MJPG clip with the JPEG data of frames `bad` overwritten by noise."""
    clean = _write_video(tmp_path / "clean.avi", "MJPG").read_bytes()
    data = bytearray(clean)
    spans = _jpeg_spans(clean)
    assert len(spans) == N
    rng = np.random.default_rng(0)
    for i in bad:
        start, length = spans[i]
        data[start : start + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    path = tmp_path / "damaged.avi"
    path.write_bytes(bytes(data))
    return path


def _read_back(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def _link_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("attnviz-video-*")}


@pytest.fixture(params=[("mp4v", ".mp4"), ("MJPG", ".avi")], ids=["mp4", "avi"])
def clip(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    fourcc, suffix = request.param
    return _write_video(tmp_path / f"clip{suffix}", fourcc)


# --- reading ------------------------------------------------------------------------------


def test_is_video_by_suffix() -> None:
    assert is_video(Path("a/clip.MP4")) and is_video(Path("x.webm")) and is_video(Path("y.mov"))
    assert not is_video(Path("photo.jpg")) and not is_video(Path("frames"))


def test_video_file_yields_every_frame_in_order_at_its_fps(clip: Path) -> None:
    with open_frames(clip) as source:
        assert isinstance(source, VideoFile)
        frames = list(source.frames())
        assert (source.fps, source.fps_assumed, source.frame_count) == (FPS, False, N)

    assert [i for i, _ in frames] == list(range(N))
    for i, frame in frames:
        assert frame is not None and frame.shape == (H, W, 3) and frame.dtype == np.uint8
        assert _index_of(frame) == i
        red = frame[2:14, -14:-2].mean(axis=(0, 1))
        assert red[0] > 200 and red[2] < 60  # RGB, not OpenCV's BGR


def test_every_n_keeps_every_nth_frame(clip: Path) -> None:
    with open_frames(clip) as source:
        frames = list(source.frames(every=5))

    assert [i for i, _ in frames] == [0, 5, 10]
    assert [_index_of(f) for _, f in frames if f is not None] == [0, 5, 10]


def test_every_below_one_is_a_usage_error(clip: Path) -> None:
    with open_frames(clip) as source, pytest.raises(UsageError, match="--every"):
        list(source.frames(every=0))


@pytest.mark.parametrize("bad", [{5}, {5, 6, 7}, {0}, {11}, {3, 9}], ids=str)
def test_corrupt_frames_are_yielded_as_none_and_the_rest_still_read(
    tmp_path: Path, bad: set[int]
) -> None:
    with open_frames(_damaged_avi(tmp_path, bad)) as source:
        frames = list(source.frames())

    assert [i for i, _ in frames] == list(range(N))  # indices stay true to the source
    assert {i for i, f in frames if f is None} == bad
    assert all(_index_of(f) == i for i, f in frames if f is not None)


def test_corrupt_frames_with_every_n_count_only_kept_positions(tmp_path: Path) -> None:
    with open_frames(_damaged_avi(tmp_path, {4, 5})) as source:
        frames = list(source.frames(every=2))

    assert [(i, f is None) for i, f in frames] == [
        (0, False),
        (2, False),
        (4, True),
        (6, False),
        (8, False),
        (10, False),
    ]


def test_truncated_video_counts_the_frames_its_header_promised(tmp_path: Path) -> None:
    clean = _write_video(tmp_path / "clean.avi", "MJPG").read_bytes()
    cut_at = _jpeg_spans(clean)[4][0] + 10  # inside frame 4's data; frames 4..11 are gone
    path = tmp_path / "cut.avi"
    path.write_bytes(clean[:cut_at])

    with open_frames(path) as source:
        frames = list(source.frames())

    assert [i for i, f in frames if f is not None] == [0, 1, 2, 3]
    assert len(frames) == N


@pytest.mark.parametrize("content", [b"this is a text file, not a video\n", b""], ids=str)
def test_not_a_video_is_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(content)

    with pytest.raises(AttnvizError) as info:
        open_frames(fake)

    message = str(info.value)
    assert "\n" not in message and str(fake) in message and "cannot open as a video" in message


def test_damaged_and_fake_videos_print_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    damaged = _damaged_avi(tmp_path, {5})
    fake = tmp_path / "fake.mp4"
    fake.write_text("hello")
    capfd.readouterr()

    with open_frames(damaged) as source:
        list(source.frames())
    with pytest.raises(AttnvizError):
        open_frames(fake)

    # FFmpeg's and OpenCV's own complaints would tear through the progress bar.
    assert capfd.readouterr() == ("", "")


def test_expected_frames_for_progress(clip: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("hello")
    assert (expected_frames(clip), expected_frames(clip, every=5)) == (N, 3)
    assert expected_frames(fake) is None


def test_missing_video_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AttnvizError, match="cannot read video"):
        open_frames(tmp_path / "nope.mp4")


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame02b.png", "a.png"]
    assert sorted(names, key=natural_key) == [
        "a.png",
        "Frame1.png",
        "frame2.png",
        "frame02b.png",
        "frame10.png",
    ]


def test_frame_folder_natural_order_and_corrupt_file_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10, 3):
        Image.fromarray(_frame(i)).save(folder / f"frame{i}.png")
    (folder / "frame4.png").write_bytes(b"not a png")  # undecodable: skipped, counted
    (folder / "notes.txt").write_text("not a frame")
    Image.fromarray(_frame(7)).save(folder / ".hidden.png")  # hidden files are never frames
    (folder / "sub").mkdir()
    Image.fromarray(_frame(8)).save(folder / "sub" / "frame0.png")  # nor are subfolders

    with open_frames(folder) as source:
        assert isinstance(source, FrameFolder)
        assert (source.fps, source.frame_count) == (DEFAULT_FPS, 5)
        frames = list(source.frames())
        every_other = list(source.frames(every=2))

    assert [None if f is None else _index_of(f) for _, f in frames] == [1, 2, 3, None, 10]
    assert [i for i, _ in every_other] == [0, 2, 4]


def test_empty_frame_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(AttnvizError, match="no frames in folder"):
        open_frames(tmp_path)


# --- writing -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(W, H), (65, 49)], ids=["even", "odd"])
def test_writer_produces_a_readable_video_and_no_temporaries(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    out = tmp_path / "out" / "clip.mp4"
    links_before = _link_dirs()

    with VideoWriter(out, fps=FPS) as writer:
        for i in range(N):
            writer.write(_frame(i, size))

    frames, fps = _read_back(out)
    even = (size[0] + size[0] % 2, size[1] + size[1] % 2)  # encoders want even sides
    assert (writer.path, writer.codec, writer.note, writer.size) == (out, "mp4v", None, even)
    assert len(frames) == N and fps == FPS
    assert all(f.shape == (even[1], even[0], 3) for f in frames)
    assert [_index_of(f) for f in frames] == list(range(N))
    assert _leftovers(tmp_path) == []
    assert _link_dirs() <= links_before


def test_writer_fits_frames_of_another_size(tmp_path: Path) -> None:
    out = tmp_path / "mixed.mp4"
    with VideoWriter(out, fps=FPS) as writer:
        writer.write(_frame(0))
        writer.write(_frame(1, (128, 48)))  # wider: scaled down, letterboxed
        writer.write(_frame(2, (32, 24)))  # smaller: scaled up

    frames, _ = _read_back(out)
    assert [f.shape for f in frames] == [(H, W, 3)] * 3


def test_writer_failure_leaves_no_output_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"

    with pytest.raises(RuntimeError, match="boom"), VideoWriter(out, fps=FPS) as writer:
        for i in range(5):
            writer.write(_frame(i))
        raise RuntimeError("boom")

    assert list(tmp_path.iterdir()) == []


def test_writer_with_no_frames_writes_nothing(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "empty.mp4", fps=FPS):
        pass
    assert list(tmp_path.iterdir()) == []


def test_writer_output_is_byte_identical_for_the_same_frames(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.mp4"):
        with VideoWriter(tmp_path / name, fps=FPS) as writer:
            for i in range(N):
                writer.write(_frame(i))
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_gif_is_written_looping_at_the_video_rate(tmp_path: Path) -> None:
    gif = GifWriter(tmp_path / "clip.gif", fps=FPS)
    for i in range(N):
        gif.add(_frame(i))
    gif.save()

    with Image.open(tmp_path / "clip.gif") as image:
        assert (image.n_frames, image.size, image.info["loop"]) == (N, (W, H), 0)
        assert image.info["duration"] == 80  # 1000 / 12 ms, in the GIF's 10 ms steps
    assert gif.note is None
    assert _leftovers(tmp_path) == []


def test_gif_is_capped_in_frames_and_width(tmp_path: Path) -> None:
    gif = GifWriter(tmp_path / "long.gif", fps=50.0)
    for i in range(GIF_MAX_FRAMES + 10):
        gif.add(np.full((40, 1280, 3), i % 256, np.uint8))  # distinct frames: none merged
    gif.save()

    with Image.open(tmp_path / "long.gif") as image:
        assert (image.n_frames, image.size) == (GIF_MAX_FRAMES, (640, 20))
    assert gif.note is not None and f"first {GIF_MAX_FRAMES} frames" in gif.note


def test_gif_is_capped_in_playing_time(tmp_path: Path) -> None:
    gif = GifWriter(tmp_path / "slow.gif", fps=2.0)  # 500 ms a frame: 10 s is 20 frames
    for i in range(30):
        gif.add(_frame(i % 12))
    gif.save()

    with Image.open(tmp_path / "slow.gif") as image:
        assert image.n_frames <= 20
    assert gif.note == "GIF cut to the first 20 frames (10 s)"


# --- inputs --------------------------------------------------------------------------------


def test_walked_folders_pick_up_videos(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    _write_video(root / "clip.mp4", "mp4v")
    Image.fromarray(_frame(0)).save(root / "photo.png")

    items, rejected = discover([root])

    assert rejected == []
    assert [i.relative.as_posix() for i in items] == ["clip.mp4", "photo.png"]


def test_as_video_makes_each_named_folder_one_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(_frame(0)).save(frames / "f1.png")
    clip = _write_video(tmp_path / "clip.mp4", "mp4v")

    items, rejected = discover([frames, clip], as_video=True)
    monkeypatch.chdir(frames)
    here, _ = discover([Path(".")], as_video=True)

    assert rejected == []
    assert [(i.path, i.relative) for i in items] == [
        (frames, Path("frames")),
        (clip, Path("clip.mp4")),
    ]
    assert [i.relative for i in here] == [Path("frames")]  # "." is named after itself


# --- end to end with the shipped model ------------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> BatchRunner:
    return make_runner(load_model("lite0-cbam", None, "cpu"), "attention", None)


def _options(out: Path, **changes: object) -> RunOptions:
    return RunOptions(inputs=[], out=out, batch_size=4, panel_height=96, **changes)


def _figure_size(runner: BatchRunner, opts: RunOptions, frame: np.ndarray) -> tuple[int, int]:
    figure = render_figure(frame, runner.run([frame])[0], opts)
    h, w = figure.shape[:2]
    return w + w % 2, h + h % 2


@pytest.mark.parametrize("every", [1, 5])
def test_process_video_writes_one_triptych_per_kept_frame(
    tmp_path: Path, runner: BatchRunner, every: int
) -> None:
    clip = _write_video(tmp_path / "clip.mp4", "mp4v")
    out = tmp_path / "out"
    opts = _options(out, every=every, gif=True)
    progress: list[int] = []

    record, notes = process_video(
        InputItem(clip, Path("clip.mp4")), opts, runner, GracefulStop(), progress.append
    )

    expected = math.ceil(N / every)
    frames, fps = _read_back(out / "clip.mp4")
    assert len(frames) == expected and fps == pytest.approx(FPS / every)
    assert frames[0].shape[1::-1] == _figure_size(runner, opts, _frame(0))
    assert record["outputs"] == {"video": "clip.mp4", "gif": "clip.gif"}
    assert record["frames"] == {
        "read": expected,
        "written": expected,
        "skipped_corrupt": 0,
        "fps": FPS,
        "every": every,
        "video_fps": FPS / every,
    }
    assert record["image_size"] == [W, H] and record["layers"]
    maps = record["maps"]
    assert isinstance(maps, dict) and set(maps) == set(record["layers"])  # type: ignore[arg-type]
    assert progress[-1] == expected and progress == sorted(progress)
    with Image.open(out / "clip.gif") as gif:
        assert gif.n_frames == expected
    assert notes == []
    assert _leftovers(out) == []


def test_process_video_skips_and_counts_corrupt_frames(tmp_path: Path, runner: BatchRunner) -> None:
    clip = _damaged_avi(tmp_path, {5, 6})
    out = tmp_path / "out"

    record, notes = process_video(
        InputItem(clip, Path("damaged.avi")), _options(out), runner, GracefulStop(), lambda _n: None
    )

    frames, _ = _read_back(out / "damaged.mp4")
    assert len(frames) == N - 2
    assert record["frames"]["skipped_corrupt"] == 2  # type: ignore[index]
    assert record["frames"]["read"] == N  # type: ignore[index]
    assert notes == ["2 corrupt frames skipped"]


def test_process_video_of_a_frame_folder(tmp_path: Path, runner: BatchRunner) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(_frame(i)).save(folder / f"img{i}.jpg")
    (items, _) = discover([folder], as_video=True)
    out = tmp_path / "out"

    record, _ = process_video(items[0], _options(out), runner, GracefulStop(), lambda _n: None)

    frames, fps = _read_back(out / "shots.mp4")
    assert len(frames) == 6 and fps == DEFAULT_FPS
    assert record["input"] == str(folder)


def test_process_video_stopped_leaves_nothing(tmp_path: Path, runner: BatchRunner) -> None:
    clip = _write_video(tmp_path / "clip.mp4", "mp4v")
    out = tmp_path / "out"
    stop = GracefulStop()

    def stop_after_first_batch(_done: int) -> None:
        stop.signum = signal.SIGINT  # as the signal handler would

    with pytest.raises(VideoStopped):
        process_video(
            InputItem(clip, Path("clip.mp4")),
            _options(out, gif=True),
            runner,
            stop,
            stop_after_first_batch,
        )

    assert list(out.rglob("*")) == []


def test_process_video_of_a_non_video_fails_cleanly(tmp_path: Path, runner: BatchRunner) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("hello")
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(AttnvizError, match="cannot open as a video"):
        process_video(
            InputItem(fake, Path("notes.mp4")), _options(out), runner, GracefulStop(), print
        )
    assert list(out.iterdir()) == []


# --- the CLI ------------------------------------------------------------------------------


def test_cli_video_run_writes_a_video_and_gif_and_resumes(tmp_path: Path) -> None:
    from tests.conftest import attnviz, summary_count, write_photo

    (tmp_path / "in").mkdir()
    clip = _write_video(tmp_path / "in" / "clip.mp4", "mp4v")
    photo = write_photo(tmp_path / "in" / "photo.jpg", (64, 48))
    out = tmp_path / "out"
    code, output = attnviz("run", tmp_path / "in", "--out", out, "--every", "3", "--gif")
    assert code == 0, output
    frames, fps = _read_back(out / "clip.mp4")
    assert len(frames) == 4 and fps == pytest.approx(FPS / 3)  # 12 frames, every third
    assert (out / "clip.gif").is_file() and (out / "photo.png").is_file()
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    video = next(r for r in records if r["input"] == str(clip))
    assert video["frames"]["written"] == 4 and video["outputs"]["gif"] == "clip.gif"

    code, output = attnviz("run", tmp_path / "in", "--out", out, "--every", "3", "--gif")
    assert code == 0 and summary_count(output, "up to date") == 2
    # Another sampling redoes the video only: frame sampling does not shape photos.
    code, output = attnviz("run", tmp_path / "in", "--out", out, "--every", "2", "--gif")
    assert code == 0 and summary_count(output, "processed") == 1, output
    assert len(_read_back(out / "clip.mp4")[0]) == 6
    assert photo.is_file()


def test_cli_frame_folder_as_video_and_corrupt_frames_counted(tmp_path: Path) -> None:
    from tests.conftest import attnviz

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(N):
        Image.fromarray(_frame(i)).save(frames / f"f{i}.png")
    (frames / "f5.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    code, output = attnviz("run", frames, "--out", out, "--as-video")
    assert code == 0, output
    assert "1 corrupt frame skipped" in output
    written, _ = _read_back(out / "frames.mp4")
    assert len(written) == N - 1

    damaged = _damaged_avi(tmp_path, {4})
    code, output = attnviz("run", damaged, "--out", out)
    assert code == 0 and "1 corrupt frame skipped" in output, output
    assert len(_read_back(out / "damaged.mp4")[0]) == N - 1


@pytest.mark.parametrize(("name", "fourcc"), [("clip.mov", "mp4v"), ("clip.webm", "VP80")])
def test_cli_reads_mov_and_webm_and_writes_stats_rows(
    tmp_path: Path, name: str, fourcc: str
) -> None:
    from tests.conftest import attnviz

    (tmp_path / "in").mkdir()
    _write_video(tmp_path / "in" / name, fourcc)
    out, stats = tmp_path / "out", tmp_path / "stats.csv"
    code, output = attnviz("run", tmp_path / "in", "--out", out, "--stats", stats)
    assert code == 0, output
    assert len(_read_back(out / "clip.mp4")[0]) == N
    # One row per layer for the whole video: its majority class and the maps' range.
    rows = list(csv.DictReader(stats.open()))
    assert [r["layer"] for r in rows] == ["attention.pool"]
    assert rows[0]["top1"] and 0.0 <= float(rows[0]["min"]) <= float(rows[0]["max"]) <= 1.0


def test_cli_a_video_that_cannot_be_drawn_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A render error in a video (a NaN map, an OpenCV refusal) is one failed input."""
    import attnviz.engine.video as video_run
    from tests.conftest import attnviz, summary_count, write_photo

    (tmp_path / "in").mkdir()
    _write_video(tmp_path / "in" / "clip.mp4", "mp4v")
    write_photo(tmp_path / "in" / "photo.jpg", (64, 48))

    def refuse(*_args: object, **_kwargs: object) -> np.ndarray:
        raise cv2.error("simulated: cannot draw this frame")

    monkeypatch.setattr(video_run, "render_figure", refuse)
    out = tmp_path / "out"
    code, output = attnviz("run", tmp_path / "in", "--out", out)
    assert code == 1, output
    assert summary_count(output, "failed") == 1 and "cannot render (error" in output
    assert (out / "photo.png").is_file() and not (out / "clip.mp4").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] in ([], [".thumbs"])
