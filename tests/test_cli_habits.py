"""CLI habits: config files and their precedence, --print-config, doctor, --version,
--quiet/--verbose, NO_COLOR, completion and the examples in every --help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import typer.main

from attnviz import DEFAULT_MODEL, __version__
from attnviz.cli import app
from tests.conftest import attnviz, write_photo

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Colour and style escapes (SGR); a live progress bar's cursor moves are not colour.
SGR = re.compile(r"\x1b\[[0-9;]*m")


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def printed_config(*flags: str) -> dict[str, tuple[object, str]]:
    """``run --print-config`` parsed: {key: (value, source)}; checks that it is valid TOML."""
    code, output = attnviz("run", "--print-config", *flags)
    assert code == 0, output
    values = tomllib.loads(output)["run"]
    sources = {}
    for line in output.splitlines():
        if match := re.fullmatch(r"#? ?([a-z-]+) = .*  # (\S+)", line):
            sources[match.group(1)] = match.group(2)
    return {key: (values.get(key), source) for key, source in sources.items()}


def _attnviz_process(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user starts it, in its own process (environment read at start)."""
    script = Path(sys.executable).with_name("attnviz")  # the console script of this venv
    if not script.is_file():
        pytest.skip("attnviz is not installed as a command in this environment")
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "100", **env},
        timeout=300,
    )


@pytest.fixture
def attnviz_process() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``_attnviz_process``, for the tests that need a process of their own (their tier)."""
    return _attnviz_process


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory: config files are read from there only."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


PYPROJECT = """\
[project]
name = "my-figures"

[tool.attnviz.run]
cmap = "viridis"
layer = "all"
format = "jpg"
panel_size = 100
"""
ATTNVIZ_TOML = """\
[run]
cmap = "turbo"
out = "figs"
"""


# --- config files: precedence, end to end -------------------------------------------


def test_config_precedence_flag_over_attnviz_toml_over_pyproject_over_default(
    project: Path,
) -> None:
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "attnviz.toml").write_text(ATTNVIZ_TOML)
    config = printed_config("--panel-size", "120")
    assert config["cmap"] == ("turbo", "attnviz.toml")  # attnviz.toml beats pyproject.toml
    assert config["out"] == ("figs", "attnviz.toml")
    assert config["layer"] == ("all", "pyproject.toml")
    assert config["format"] == ("jpg", "pyproject.toml")
    assert config["panel-size"] == (120, "flag")  # the flag beats pyproject.toml
    assert config["model"] == (DEFAULT_MODEL, "default")
    assert config["weights"] == (None, "default")  # unset: commented out, still listed


def test_a_run_uses_the_config_and_flags_override_it(project: Path) -> None:
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "attnviz.toml").write_text(ATTNVIZ_TOML)
    photo = write_photo(project / "photo.png", (90, 60))
    code, output = attnviz("run", photo, "--model", "lite0-cbam")
    assert code == 0, output
    # out from attnviz.toml, format and layer=all from pyproject.toml
    assert sorted(p.name for p in (project / "figs").iterdir()) == ["manifest.jsonl", "photo.jpg"]
    assert len(records(project / "figs")[0]["layers"]) == 4

    code, output = attnviz("run", photo, "--model", "lite0-cbam", "--out", "mine",
                           "--format", "png", "--layer", "-1")  # fmt: skip
    assert code == 0, output
    assert (project / "mine" / "photo.png").is_file()
    assert records(project / "mine")[0]["layers"] == ["attention.head"]


def test_help_shows_the_configured_default(project: Path) -> None:
    (project / "attnviz.toml").write_text('[run]\ncmap = "turbo"\n[eval]\nbatch-size = 7\n')
    assert "(default: turbo)" in attnviz("run", "--help")[1]
    assert "(default: 7)" in attnviz("eval", "--help")[1]


def test_print_config_pastes_back_into_attnviz_toml(project: Path) -> None:
    (project / "pyproject.toml").write_text(PYPROJECT)
    code, first = attnviz("run", "--print-config", "--alpha", "0.25", "--save-raw")
    assert code == 0, first
    (project / "attnviz.toml").write_text(first)
    code, second = attnviz("run", "--print-config")
    assert code == 0, second
    values = [line.split("  # ")[0] for line in first.splitlines()]
    assert values == [line.split("  # ")[0] for line in second.splitlines()]
    assert "alpha = 0.25  # attnviz.toml" in second
    assert "save-raw = true  # attnviz.toml" in second


def test_print_config_without_config_files_needs_no_inputs(project: Path) -> None:
    config = printed_config()
    assert config["cmap"] == ("jet", "default")
    assert all(source == "default" for _, source in config.values())
    assert not (project / "attnviz-out").exists()  # nothing ran


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("attnviz.toml", '[run]\ncmpa = "turbo"\n', "key 'cmpa' in [run] (did you mean 'cmap'"),
        ("attnviz.toml", '[rnu]\ncmap = "turbo"\n', "unknown table [rnu] (did you mean [run]?)"),
        ("attnviz.toml", '[run]\nbatch-size = "8"\n', 'batch-size must be an integer, got "8"'),
        ("attnviz.toml", "[run]\nsave-raw = 1\n", "[run] save-raw must be true or false"),
        ("attnviz.toml", 'cmap = "turbo"\n', "'cmap' must be inside a table naming its command"),
        ("attnviz.toml", "[run\ncmap = 1\n", "not valid TOML"),
        ("pyproject.toml", "[tool.attnviz.run]\nlayers = 'all'\n", "in [tool.attnviz.run] (did"),
        ("pyproject.toml", "[tool.attnviz]\ncmap = 'turbo'\n", "e.g. [tool.attnviz.run]"),
        ("pyproject.toml", "[project\n", "pyproject.toml: not valid TOML"),
    ],
)  # fmt: skip
def test_a_bad_config_file_is_one_line_and_exit_2(
    project: Path, file: str, text: str, message: str
) -> None:
    (project / file).write_text(text)
    photo = write_photo(project / "photo.jpg")
    code, output = attnviz("run", photo)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {file}"), output
    assert message in lines[0]
    assert not (project / "attnviz-out").exists()


def test_pyproject_without_an_attnviz_table_is_ignored(project: Path) -> None:
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.ruff]\nline-length = 9\n')
    assert printed_config()["cmap"] == ("jet", "default")


def test_other_commands_read_their_own_table(project: Path) -> None:
    (project / "attnviz.toml").write_text('[layers]\nmodel = "cbam-resnet18"\n')
    code, output = attnviz("layers")
    assert code == 0, output
    assert "attention layers of cbam-resnet18" in output


# --- run: inputs, quiet, verbose -------------------------------------------------------


@pytest.mark.usefixtures("project")
def test_run_without_inputs_is_a_usage_error() -> None:
    code, output = attnviz("run")
    assert code == 2
    assert "missing INPUTS" in output


def test_quiet_prints_only_failures(project: Path) -> None:
    photo = write_photo(project / "photo.jpg")
    code, output = attnviz("run", photo, "--quiet")
    assert code == 0
    assert output == ""
    (project / "broken.jpg").write_bytes(b"not a jpeg")
    code, output = attnviz("run", photo, project / "broken.jpg", "-q")
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("failed:") and "broken.jpg" in lines[0]


def test_verbose_adds_the_setup_and_throughput(project: Path) -> None:
    photo = write_photo(project / "photo.jpg")
    code, output = attnviz("run", photo, "--verbose", "--device", "cpu")
    assert code == 0, output
    assert f"model {DEFAULT_MODEL} on cpu" in output
    assert "throughput" in output and "processed" in output


def test_quiet_and_verbose_exclude_each_other_unless_a_flag_overrides_the_config(
    project: Path,
) -> None:
    photo = write_photo(project / "photo.jpg")
    code, output = attnviz("run", photo, "-q", "-v")
    assert code == 2 and "mutually exclusive" in output
    (project / "attnviz.toml").write_text("[run]\nquiet = true\n")
    code, output = attnviz("run", photo, "--verbose")
    assert code == 0 and "throughput" in output  # the flag wins over the file


# --- version, help, completion, colour ----------------------------------------------


def test_version_prints_the_version_without_importing_torch() -> None:
    code, output = attnviz("--version")
    assert (code, output.strip()) == (0, f"attnviz {__version__}")
    probe = (
        "import sys; from attnviz.cli import main; sys.argv = ['attnviz', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'cv2') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.splitlines() == [f"attnviz {__version__}", "[]"], done.stderr


def test_every_command_help_has_an_example() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"run", "eval", "layers", "models", "train", "doctor", "gallery"} <= set(commands)
    for name in commands:
        code, output = attnviz(name, "--help")
        assert code == 0, output
        assert "Example: attnviz " + name in output, name
    assert "Example: attnviz" in attnviz("--help")[1]


def test_completion_is_offered_and_completes_offline(
    attnviz_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    output = attnviz("--help")[1]
    assert "--install-completion" in output and "--show-completion" in output
    # What the installed bash script does on <TAB>: ask the program itself.
    env = {"_ATTNVIZ_COMPLETE": "complete_bash", "COMP_WORDS": "attnviz run --cm"}
    done = attnviz_process(**env, COMP_CWORD="2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["--cmap"]


@pytest.mark.parametrize("off", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_color_and_dumb_terminals_get_no_escapes(
    tmp_path: Path,
    off: dict[str, str],
    attnviz_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    photo = write_photo(tmp_path / "photo.jpg")
    forced = {"FORCE_COLOR": "1", "TERM": "xterm-256color"}
    # Control: forced colour does colour, so the check below can see escapes.
    assert SGR.search(attnviz_process("--help", **forced).stdout)
    for args in (
        ["--help"],
        ["run", "--help"],
        ["run", "--bogus-flag"],  # typer's own usage-error box
        ["run", str(photo), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "out")],
    ):
        done = attnviz_process(*args, **{**forced, **off})
        assert not SGR.search(done.stdout + done.stderr), (args, done.stdout + done.stderr)
    assert (tmp_path / "out" / "photo.png").is_file()


# --- doctor ------------------------------------------------------------------------------


@pytest.mark.usefixtures("project")
def test_doctor_passes_here_and_lists_versions() -> None:
    code, output = attnviz("doctor")
    assert code == 0, output
    assert torch.__version__ in output
    for check in ("Python", "torchvision", "OpenCV", "CUDA", "MPS", "gate weights"):
        assert check in output
    assert "all finite" in output  # the default model loaded and ran
    assert "1 attention map," in " ".join(output.split())  # one map: singular
    assert " fail " not in output


@pytest.mark.usefixtures("project")
def test_doctor_in_a_narrow_terminal_prints_each_path_whole_on_its_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from attnviz.cli import output as cli
    from attnviz.models.registry import lite0_trunk_file

    monkeypatch.setattr(cli.out_console, "width", 50)  # narrower than any table of paths
    code, output = attnviz("doctor")
    assert code == 0, output
    row = next(line for line in output.splitlines() if line.startswith("trunk weights"))
    assert str(lite0_trunk_file()) in row, output


def test_doctor_fails_when_the_shipped_weights_are_missing(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnviz.cli import output as cli
    from attnviz.models import spec

    monkeypatch.setattr(spec, "PRETRAINED_DIRS", (project / "nowhere",))
    monkeypatch.setattr(cli.out_console, "width", 200)  # a wide terminal: no wrapped cells
    code, output = attnviz("doctor")
    assert code == 1, output
    assert re.search(r"gate weights\s*│\s*fail", output), output
    assert f"{DEFAULT_MODEL}.safetensors not found" in output
    assert f"broken: gate weights, {DEFAULT_MODEL} load" in output


def test_doctor_checks_the_output_folder_the_config_names(project: Path) -> None:
    (project / "attnviz.toml").write_text(ATTNVIZ_TOML)  # [run] out = "figs"
    code, output = attnviz("doctor")
    assert code == 0, output
    flat = re.sub(r"[\s│]+", "", output)  # a table may wrap the path over its rows
    assert f"{project.resolve()}/figs:writable" in flat, output


def test_doctor_reports_a_broken_config_file(project: Path) -> None:
    (project / "attnviz.toml").write_text("[run]\nnope = 1\n")
    code, output = attnviz("doctor")
    assert code == 1, output
    assert re.search(r"config\s*│?\s*fail", output), output  # table or one line a check


@pytest.mark.parametrize("name", ["", *sorted(typer.main.get_command(app).commands)])  # type: ignore[attr-defined]
def test_help_at_80_columns_prints_every_name_and_text_whole(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two columns, wrapped by rich: every flag whole, every help text as written (brackets
    included, never read as markup), the example on one line, nothing wider than 80."""
    monkeypatch.setenv("COLUMNS", "80")
    group = typer.main.get_command(app)
    command = group.commands[name] if name else group  # type: ignore[attr-defined]
    code, output = attnviz(*([name] if name else []), "--help")
    assert code == 0, output
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "<bool>" not in output
    words = output.replace("│", " ").split()
    text = " ".join(words)
    for param in command.params:
        if getattr(param, "help", None):
            assert " ".join(param.help.split()) in text, param.help
        if param.param_type_name != "option":
            continue
        for flag in (*param.opts, *param.secondary_opts):
            assert flag in words or f"{flag}," in words, flag
        if isinstance(param.default, (int, float, str)) and not param.is_flag:
            assert f"(default: {param.default})" in text, param.name
    example = next(line.strip() for line in command.help.splitlines() if "Example:" in line)
    assert example in [line.strip() for line in lines], example
    assert len(lines) < 100, len(lines)


def test_train_help_shows_its_defaults() -> None:
    code, output = attnviz("train", "--help")
    assert code == 0
    text = " ".join(output.replace("│", " ").split())
    assert "(default: pretrained/lite0-FAMILY)" in text and "(default: 0.95,0.95,0.95,0.7)" in text


def test_a_live_terminal_says_the_model_is_loading_before_the_bar_counts(
    project: Path, attnviz_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Torch and the model take seconds to load: the bar names what it waits for."""
    write_photo(project / "a.jpg")
    result = attnviz_process("run", "a.jpg", TTY_INTERACTIVE="1", TTY_COMPATIBLE="1")
    assert result.returncode == 0, result.stderr
    frames = SGR.sub("", result.stderr).replace("\r", "\n")
    assert f"loading {DEFAULT_MODEL}" in frames, frames
    assert re.search(r"attnviz\s.*1/1", frames), frames


def test_help_marks_required_options_and_shows_a_switch_a_config_turns_on(project: Path) -> None:
    (project / "attnviz.toml").write_text("[run]\nquiet = true\n")
    run_help = " ".join(attnviz("run", "--help")[1].replace("│", " ").split())
    assert (
        "-q, --quiet Only errors and failed inputs, one line each. (default: --quiet)" in run_help
    )
    eval_help = " ".join(attnviz("eval", "--help")[1].replace("│", " ").split())
    assert re.search(r"--boxes PATH CSV: \S+ per box\. \(required\)", eval_help), eval_help


@pytest.mark.parametrize("columns", [40, 60])
def test_help_in_a_narrow_terminal_prints_every_flag_and_default_whole(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    code, output = attnviz("run", "--help")
    assert code == 0
    assert max(len(line) for line in output.splitlines()) <= columns
    words = output.replace("│", " ").split()
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    for param in command.params:
        for flag in (*param.opts, *param.secondary_opts):
            assert param.param_type_name != "option" or flag in words or f"{flag}," in words
    assert "lite0-attnpool)" in words and "attnviz-out)" in words
