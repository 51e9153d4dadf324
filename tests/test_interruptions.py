"""Runs that are interrupted, repeated, starved of disk or memory: nothing is lost or half-written.

These start the real CLI as a separate process (signals and resource limits need one).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnviz.engine.runner import BatchRunner
from attnviz.engine.stopping import GracefulStop
from attnviz.errors import AttnvizError
from attnviz.models import LoadedModel, ModelSpec, WeightsSource
from tests.conftest import write_photo
from tests.toy_models import ToyGated

ATTNVIZ = [sys.executable, "-m", "attnviz", "run"]
PHOTOS = 24  # enough that a run is still going when the test's signal arrives


def _photos(folder: Path, count: int) -> Path:
    for i in range(count):
        write_photo(folder / f"p{i:03d}.jpg", (96, 64), seed=i)
    return folder


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _assert_nothing_half_written(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], "temporary files left behind"
    for figure in out.glob("*.png"):
        with Image.open(figure) as img:
            img.load()  # raises on a truncated file


def _wait_for_first_output(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob("*.png")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def sigint_not_ignored() -> Iterator[None]:
    """A shell starts background jobs with SIGINT ignored, and attnviz rightly leaves an
    ignored signal alone (nohup). These tests are about Ctrl-C, so they run with Python's
    own handler, which children inherit as the default action across exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photos(tmp_path_factory.mktemp("photos"), PHOTOS)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_keeps_what_is_done_and_a_rerun_resumes(
    photos: Path, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    out = tmp_path / "out"
    args = [*ATTNVIZ, str(photos), "--out", str(out), "--batch-size", "1", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_first_output(proc, out)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)

    assert proc.returncode == code, output
    assert f"stopped by {sig.name}" in output and "Traceback" not in output
    done = _records(out)
    assert 0 < len(done) < PHOTOS
    assert sorted(out.glob("*.png")) == sorted(out / r["outputs"]["figure"] for r in done)
    _assert_nothing_half_written(out)

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"up to date │ {len(done)}" in rerun.stdout.replace("┃", "│")
    assert len(_records(out)) == PHOTOS and len(list(out.glob("*.png"))) == PHOTOS


def test_sigkill_leaves_no_half_written_file_and_the_next_run_cleans_up(
    photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [*ATTNVIZ, str(photos), "--out", str(out), "--batch-size", "1", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_first_output(proc, out)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    # Whatever the kill interrupted, every figure on disk is complete.
    for figure in out.glob("*.png"):
        with Image.open(figure) as img:
            img.load()

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # What the killed run finished is found in its manifest journal and not redone.
    up_to_date = int(rerun.stdout.split("up to date │")[1].split("│")[0])
    assert up_to_date > 0, rerun.stdout
    _assert_nothing_half_written(out)
    assert len(_records(out)) == PHOTOS


def test_rerun_skips_up_to_date_outputs_and_redoes_changed_inputs_or_settings(
    tmp_path: Path,
) -> None:
    photos = _photos(tmp_path / "photos", 3)
    out = tmp_path / "out"
    base = [*ATTNVIZ, str(photos), "--out", str(out), "--device", "cpu"]
    assert subprocess.run(base, capture_output=True, timeout=300).returncode == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    write_photo(photos / "p001.jpg", (96, 64), seed=99)  # one input changes
    again = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert "processed  │ 1" in again.stdout and "up to date │ 2" in again.stdout, again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}["p000.png"] == first[
        "p000.png"
    ]

    for flags, processed in (
        (["--cmap", "turbo"], 3),
        (["--cmap", "turbo"], 0),
        (["--overwrite", "--cmap", "turbo"], 3),
    ):
        result = subprocess.run(base + flags, capture_output=True, text=True, timeout=300)
        assert f"processed  │ {processed}" in result.stdout, (flags, result.stdout)


def test_a_full_disk_stops_the_run_with_a_clear_error_and_no_corrupt_file(
    photos: Path, tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes the kernel refuse to grow files past 20 kB: a real failing write."""
    out = tmp_path / "out"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = subprocess.run(
        [*ATTNVIZ, str(photos), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )

    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot write (File too large); stopping" in lines[0], lines
    assert "Traceback" not in result.stderr
    _assert_nothing_half_written(out)
    assert not list(out.glob("*.png"))


def test_an_output_folder_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    photo = write_photo(tmp_path / "p.jpg")

    result = subprocess.run(
        [*ATTNVIZ, str(photo), "--out", str(blocker / "out")], capture_output=True, text=True
    )

    assert result.returncode == 1
    assert "output folder is not writable" in result.stderr
    assert "Traceback" not in result.stderr


def _without_root_powers(command: list[str]) -> list[str]:
    """Root ignores file permissions; drop the two capabilities that let it (if root)."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]


def test_an_unreadable_file_is_reported_and_the_others_are_processed(tmp_path: Path) -> None:
    good = write_photo(tmp_path / "good.jpg")
    secret = write_photo(tmp_path / "secret.jpg")
    secret.chmod(0o000)
    out = tmp_path / "out"

    result = subprocess.run(
        _without_root_powers([*ATTNVIZ, str(good), str(secret), "--out", str(out)]),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    failed = [ln for ln in result.stderr.splitlines() if ln.startswith("failed")]
    assert len(failed) == 1 and "secret.jpg" in failed[0] and "permission denied" in failed[0]
    assert (out / "good.png").is_file() and not (out / "secret.png").exists()


# --- out of memory: retried at half the batch size, down to one -------------------------


class _MemoryHungry(nn.Module):
    """The toy network, but a batch larger than `fits` raises CUDA's out-of-memory error."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.net, self.fits, self.batches = ToyGated(), fits, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        if len(x) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def _loaded(net: nn.Module) -> LoadedModel:
    spec = ModelSpec(
        "toy", "toy", 32, WeightsSource.USER, "", lambda _: net, (0.5,) * 3, (0.5,) * 3
    )
    return LoadedModel(net.eval(), spec, torch.device("cpu"), 32)


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(n)]


def test_out_of_memory_retries_at_half_the_batch_and_gives_the_same_maps() -> None:
    hungry = _MemoryHungry(fits=2)
    runner = BatchRunner(_loaded(hungry), ["net.gate2"])
    reference = BatchRunner(_loaded(hungry.net), ["gate2"]).run(_images(8))

    results = runner.run(_images(8))

    assert hungry.batches[:3] == [8, 4, 2]  # halved until it fits
    assert runner.batch_limit == 2 and hungry.batches[-1] == 2  # later batches start small
    assert runner.oom_note == "out of memory: retried with smaller batches, down to 2"
    for got, want in zip(results, reference, strict=True):
        np.testing.assert_allclose(got.layers[0].weights, want.layers[0].weights, atol=1e-6)


def test_out_of_memory_with_one_image_is_a_clear_error() -> None:
    runner = BatchRunner(_loaded(_MemoryHungry(fits=0)), ["net.gate2"])

    with pytest.raises(AttnvizError, match="out of memory with a batch of one image"):
        runner.run(_images(3))


def test_the_first_signal_asks_to_stop_and_a_second_stops_at_once() -> None:
    with GracefulStop() as stop:
        # raise_signal delivers to this thread (os.kill may pick another of the process's).
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
