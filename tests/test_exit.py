"""How the process ends: once a command is done and torch is loaded, the ``attnviz``
process skips the interpreter's teardown (unloading torch takes about 0.4 s), with the same
exit code and nothing it printed or wrote lost; whenever something still needs the
interpreter (another thread, a profiler) it exits normally, and ``main()`` called from
Python never ends the caller's process."""

from __future__ import annotations

import errno
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import attnviz.cli.commands as commands
from tests.conftest import write_photo


@pytest.fixture
def fast_exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The codes console() hands to os._exit (recorded: the test process goes on)."""
    codes: list[int] = []
    monkeypatch.setattr(commands.os, "_exit", codes.append)
    return codes


def version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["attnviz", "--version"])


@pytest.mark.parametrize(("argv", "code"), [(["--version"], 0), (["run", "--cmap", "nope"], 2)])
def test_a_finished_command_ends_the_process_at_once_with_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int], argv: list[str], code: int
) -> None:
    monkeypatch.setattr(sys, "argv", ["attnviz", *argv])
    assert sys.modules["torch"] is torch  # loaded, as after any command that ran a model
    with pytest.raises(SystemExit):
        commands.console()
    assert fast_exits == [code]


def test_main_called_from_python_raises_system_exit_and_never_ends_the_process(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int]
) -> None:
    version(monkeypatch)
    with pytest.raises(SystemExit) as done:
        commands.main()
    assert done.value.code == 0
    assert fast_exits == []


def test_without_torch_loaded_the_exit_is_normal(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int]
) -> None:
    """Help and usage errors load no torch: an ordinary exit is as fast for them."""
    version(monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    with pytest.raises(SystemExit) as done:
        commands.console()
    assert done.value.code == 0
    assert fast_exits == []


@pytest.fixture
def other_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=request.param)
    worker.start()
    yield
    release.set()
    worker.join()


@pytest.mark.parametrize(("other_thread", "ends_at_once"), [(False, False), (True, True)],
                         indirect=["other_thread"])  # fmt: skip
@pytest.mark.usefixtures("other_thread")
def test_a_running_thread_gets_a_normal_exit_unless_it_is_a_daemon(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int], ends_at_once: bool
) -> None:
    """A normal exit waits for non-daemon threads (a worker still writing); daemon threads,
    such as rich's refresher, it would not wait for either."""
    version(monkeypatch)
    with pytest.raises(SystemExit):
        commands.console()
    assert fast_exits == ([0] if ends_at_once else [])


def test_under_a_profiler_the_exit_is_normal_so_it_can_write_its_report(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int]
) -> None:
    version(monkeypatch)
    sys.setprofile(lambda *_: None)
    try:
        with pytest.raises(SystemExit):
            commands.console()
    finally:
        sys.setprofile(None)
    assert fast_exits == []


class FullDisk(io.StringIO):
    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_output_that_cannot_be_written_gets_the_normal_exit_that_reports_it(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int]
) -> None:
    """Only a reader that has gone (a broken pipe) has nothing more to be told."""
    version(monkeypatch)
    monkeypatch.setattr(sys, "stdout", FullDisk())
    with pytest.raises(SystemExit):
        commands.console()
    assert fast_exits == []


@pytest.mark.subprocess
def test_a_real_run_ends_with_its_code_output_and_files_whole(tmp_path: Path) -> None:
    write_photo(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "attnviz", "run", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1  # one input failed
    assert "bad.jpg" in done.stderr + done.stdout
    assert "processed" in done.stdout  # the summary, printed to a pipe, arrived whole
    assert (out / "good.png").stat().st_size > 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert sorted(Path(json.loads(line)["input"]).name for line in lines) == [
        "bad.jpg",
        "good.jpg",
    ]


@pytest.mark.subprocess
def test_python_m_cprofile_still_writes_its_profile(tmp_path: Path) -> None:
    profile, start = tmp_path / "attnviz.prof", tmp_path / "start.py"
    # torch loaded first, as after a command that ran a model: the fast exit would apply.
    start.write_text("import torch\nfrom attnviz.cli import console\nconsole()\n")
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(profile), str(start), "--version"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert profile.stat().st_size > 0
