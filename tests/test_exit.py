"""How the process ends: once a command is done and torch is loaded, attnviz skips the
interpreter's teardown (unloading torch takes about 0.4 s), with the same exit code and
nothing it printed or wrote lost; with another thread still running it exits normally."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import attnviz.cli.commands as commands
from tests.conftest import write_photo


@pytest.fixture
def fast_exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The codes main() hands to os._exit (recorded: the test process goes on)."""
    codes: list[int] = []
    monkeypatch.setattr(commands.os, "_exit", codes.append)
    return codes


@pytest.mark.parametrize(("argv", "code"), [(["--version"], 0), (["run", "--cmap", "nope"], 2)])
def test_a_finished_command_ends_at_once_with_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int], argv: list[str], code: int
) -> None:
    monkeypatch.setattr(sys, "argv", ["attnviz", *argv])
    assert sys.modules["torch"] is torch  # loaded, as after any command that ran a model
    with pytest.raises(SystemExit):
        commands.main()
    assert fast_exits == [code]


def test_without_torch_loaded_the_exit_is_normal(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int]
) -> None:
    """Help and usage errors load no torch: an ordinary exit is as fast for them."""
    monkeypatch.setattr(sys, "argv", ["attnviz", "--version"])
    monkeypatch.delitem(sys.modules, "torch")
    with pytest.raises(SystemExit) as done:
        commands.main()
    assert done.value.code == 0
    assert fast_exits == []


def test_another_running_thread_gets_a_normal_exit(
    monkeypatch: pytest.MonkeyPatch, fast_exits: list[int]
) -> None:
    monkeypatch.setattr(sys, "argv", ["attnviz", "--version"])
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(SystemExit) as done:
            commands.main()
    finally:
        release.set()
        worker.join()
    assert done.value.code == 0
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
