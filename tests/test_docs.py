"""The README and docs/ tell the truth: every shell, console, Python and TOML block in them
runs as written, with the shipped models, in a folder that holds the files they name.

Commands run in-process through the real CLI (one process per command would spend most of
the test importing torch). What a block needs and the docs leave to the reader is made here:
``photo.jpg`` and ``photos/`` are the example photos, ``my_model.py`` and ``nets/my.py`` a
small CBAM-style network, ``clip.mp4`` a short clip, and checkpoints a user would bring
(``cbam50.pth``, ``gcresnet33ts.safetensors``) are random weights of the right shapes.
Absolute paths (``/data/val``) are taken inside that folder. Only what this machine cannot
run is left out, each with its reason in ``SKIPPED``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import attnviz

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Commands this machine cannot run as written, by a piece of their text.
SKIPPED = {
    "uv run pytest": "the test suite itself",
    "benchmarks/throughput.py": "a benchmark of minutes, not a test (docs/performance.md)",
    "cuda:$k": "needs four GPUs",
}
# The documented command with fewer steps and photos: as written it trains for ~30 min.
FASTER = {"train": ["--steps", "1", "--batch-size", "2", "--holdout", "2"]}

USER_MODEL = """\
import torch
from torch import nn


class SpatialGate(nn.Module):
    \"\"\"CBAM's spatial attention: sigmoid(conv7x7([mean_c F; max_c F])) times F.\"\"\"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(pooled))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.stage3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), SpatialGate())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.stage3(torch.relu(self.stem(x))).mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Net()
"""


@dataclass(frozen=True)
class Block:
    page: Path
    language: str
    text: str
    line: int

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(page, match.group(1), match.group(2), line))
    return found


def by_language(*languages: str) -> list[pytest.param]:
    return [pytest.param(b, id=b.name) for b in blocks() if b.language in languages]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's working folder with everything the docs' commands name."""
    root = tmp_path_factory.mktemp("docs")
    work = root / "work"
    shutil.copytree(REPO / "examples", work / "examples")
    examples = work / "examples"
    shutil.copy(examples / "chelsea.jpg", work / "photo.jpg")
    for name in ("photos", "my-photos", "more", "data/val"):
        (work / name).mkdir(parents=True)
        shutil.copy(examples / "chelsea.jpg", work / name / "chelsea.jpg")
        shutil.copy(examples / "coffee.jpg", work / name / "coffee.jpg")
    for name in ("astronaut.jpg", "rocket.jpg"):  # training keeps two aside, learns on two
        shutil.copy(examples / name, work / "my-photos" / name)
    shutil.copy(examples / "rocket.jpg", work / "a.jpg")
    cv2.imwrite(str(work / "b.png"), cv2.imread(str(examples / "astronaut.jpg")))
    # Boxed photos, as attnviz eval reads them (ImageNet 285: Egyptian cat, 967: espresso).
    boxes = "file,imagenet_idx,width,height,x0,y0,x1,y1\n"
    boxes += "chelsea.jpg,285,451,300,60,0,360,300\ncoffee.jpg,967,600,400,150,60,450,340\n"
    for images, csv in (
        (work / "boxes/images", work / "boxes/boxes.csv"),
        (work / "my-boxed", work / "my-boxes.csv"),
        (root / "shared/data/boxes-dev/images", root / "shared/data/boxes-dev/boxes.csv"),
    ):
        images.mkdir(parents=True, exist_ok=True)
        for name in ("chelsea.jpg", "coffee.jpg"):
            shutil.copy(examples / name, images / name)
        csv.write_text(boxes)
    # A user's own network, and the weights a user would bring for built-in structures.
    (work / "my_model.py").write_text(USER_MODEL)
    (work / "nets").mkdir()
    (work / "nets/my.py").write_text(USER_MODEL)
    user_code: dict[str, object] = {}
    exec(USER_MODEL, user_code)
    save_file(user_code["build"]().state_dict(), work / "my.safetensors")  # type: ignore[operator]
    from attnviz.models.registry import get_spec

    torch.save(get_spec("cbam-resnet50").build(random_init=True).state_dict(), work / "cbam50.pth")
    timm = pytest.importorskip("timm")
    save_file(timm.create_model("gcresnet33ts").state_dict(), work / "gcresnet33ts.safetensors")
    # A short clip and a folder of its frames.
    frames = [cv2.resize(cv2.imread(str(examples / "coffee.jpg")), (96, 96))] * 6
    for clip in ("clip.mp4", "clip.mov"):
        writer = cv2.VideoWriter(str(work / clip), cv2.VideoWriter_fourcc(*"mp4v"), 6, (96, 96))
        for i, frame in enumerate(frames):
            writer.write(np.roll(frame, 8 * i, axis=1))
        writer.release()
    (work / "frames").mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(work / "frames" / f"{i}.png"), np.roll(frame, 8 * i, axis=1))
    return work


def commands(text: str, console: bool) -> list[tuple[str, list[str]]]:
    """(command, the output lines the block shows after it) for each command of a block."""
    found: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if console and not line.startswith("$ "):
            if found:
                found[-1][1].append(line)
            continue
        line = line.removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        found.append((line, []))
    return found


def skip_reason(command: str) -> str | None:
    return next((why for piece, why in SKIPPED.items() if piece in command), None)


def run(command: str, work: Path, env: dict[str, str]) -> tuple[int, str]:
    """One documented command line: `attnviz ...` words, `&&` chains, $VARIABLES."""
    code, output = 0, ""
    for part in command.split("&&"):
        words = shlex.split(part, comments=True)
        words = [re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], w) for w in words]
        if words[:2] == ["uv", "run"]:
            words = words[2:]
        assert words[0] == "attnviz", f"not an attnviz command: {command}"
        words = [str(work / w.lstrip("/")) if w.startswith("/") else w for w in words[1:]]
        words += FASTER.get(words[0], [])
        code, output = attnviz(*words)
        if code != 0:
            break
    return code, output


@pytest.mark.parametrize("block", by_language("sh", "console"))
def test_every_documented_command_runs(
    block: Block, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("COLUMNS", "200")  # tables at full width, as the docs show them
    ran = 0
    for command, shown in commands(block.text, console=block.language == "console"):
        if skip_reason(command):
            break  # the block's later commands build on this one
        tasks = range(8) if "SLURM_ARRAY_TASK_ID" in command else [0]  # what Slurm would run
        for task in tasks:
            code, output = run(command, folder, {"SLURM_ARRAY_TASK_ID": str(task)})
            errors = [line for line in shown if line.startswith("error:")]
            if errors:  # the block shows the command failing: it must fail with those words
                assert code == 2, f"{command}\n{output}"
                flat = " ".join(output.split())
                assert all(" ".join(e.split()) in flat for e in errors), output
            else:
                assert code == 0, f"{block.name}: {command}\n{output}"
                # The rows a table shows are in the real output; its header and frame are
                # left out: a narrow terminal gets one line per row instead of a table.
                for line in (shown_line for shown_line in shown if "│" in shown_line):
                    cells = [c for c in re.split(r"[│\s]+", line) if c and c != "..."]
                    assert all(c in output for c in cells), f"{line}\n{output}"
        ran += 1
    reasons = {skip_reason(c) for c, _ in commands(block.text, block.language == "console")}
    if ran == 0:
        pytest.skip(", ".join(sorted(r for r in reasons if r)))


@pytest.mark.parametrize("block", by_language("python"))
def test_every_python_block_runs(block: Block, folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(folder)
    if "import ray" in block.text:
        ray = pytest.importorskip("ray")
        # One small local cluster, gone when the block ends.
        text = block.text.replace(
            "ray.init()", 'ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")'
        )
        try:
            exec(compile(text, block.name, "exec"), {})
        finally:
            ray.shutdown()
        assert any((folder / "maps").rglob("*.png"))
        return
    exec(compile(block.text, block.name, "exec"), {})


@pytest.mark.parametrize("block", by_language("toml"))
def test_every_config_example_is_read_as_written(
    block: Block, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "attnviz.toml").write_text(block.text)
    monkeypatch.setenv("COLUMNS", "200")
    for table, values in tomllib.loads(block.text).items():
        code, output = attnviz(table, "--help")  # it shows the defaults the command will use
        assert code == 0, output
        shown = " ".join(output.replace("│", " ").split())
        for key, value in values.items():
            assert re.search(rf"--{key}\b", shown) and f"(default: {value})" in shown, key


@pytest.mark.parametrize("block", by_language("json"))
def test_the_manifest_example_names_real_keys(
    block: Block, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)
    code, output = attnviz("run", "examples/astronaut.jpg", "--save-raw", "--out", "manifest-out")
    assert code == 0, output
    record = json.loads((folder / "manifest-out/manifest.jsonl").read_text().splitlines()[0])
    shown = set(re.findall(r'"(\w+)":', block.text))
    present: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            present.update(value)
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(record)
    assert shown - present == set(), f"keys the docs show but a record lacks: {shown - present}"


def test_the_source_layout_lists_files_that_exist() -> None:
    """Every path the layout names exists; an indented name is a file of the folder above."""
    layout = next(b for b in blocks() if b.page.name == "development.md" and not b.language)
    paths, folder = [], ""
    for line in layout.text.splitlines():
        name = line.split()[0] if line.strip() else ""
        if line.startswith("  ") and name.endswith(".py"):
            paths.append(folder + name)
        elif line[:1].strip():
            paths.append(name)
            folder = name if name.endswith("/") else ""
    assert paths and all((REPO / p).exists() for p in paths), [
        p for p in paths if not (REPO / p).exists()
    ]
