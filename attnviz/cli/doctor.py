"""``attnviz doctor``: is this installation able to run? One row per check.

Every check runs even when an earlier one failed, so that one report shows everything a
user (or a bug report) needs: a broken torch install should not hide a missing weights file.
Heavy imports (torch, cv2) happen inside the checks, so that a broken one is a row, not a
crash of the doctor itself.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path

import typer
from rich.table import Table

from attnviz import DEFAULT_MODEL, __version__
from attnviz.cli.context import CONFIG_META
from attnviz.cli.output import console, out_console, printable
from attnviz.errors import AttnvizError

SMOKE_SIZE = 64  # pixels: a forward pass this small proves the weights work in well under 1 s
MIN_PYTHON = (3, 10)


class Status(str, Enum):
    """How a check came out, from fine to broken."""

    OK = "ok"
    INFO = "info"  # worth knowing, nothing to fix (e.g. no GPU: attnviz runs on the CPU)
    WARN = "warn"  # works, but something is likely not what the user wants
    FAIL = "fail"  # attnviz will not work until this is fixed


@dataclass(frozen=True)
class Check:
    """One row of the report: what was checked, how it came out, and what was found."""

    name: str
    status: Status
    detail: str


def run_checks(out: Path | None = None) -> list[Check]:
    """Every check, in the order a user would fix them; ``out``: a folder that must be writable."""
    return list(_checks(out))


def failed(checks: list[Check]) -> bool:
    """Whether any check failed (``attnviz doctor`` then exits 1)."""
    return any(c.status is Status.FAIL for c in checks)


def _checks(out: Path | None) -> Iterator[Check]:
    yield _python()
    for name, module in (
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("OpenCV", "cv2"),
        ("numpy", "numpy"),
        ("Pillow", "PIL"),
    ):
        yield _guarded(name, partial(_package_version, module))
    yield _guarded("CUDA", _cuda)
    yield _guarded("MPS", _mps)
    yield _guarded("threads", _threads)
    yield _guarded("trunk weights", _trunk_weights)
    yield _guarded("gate weights", _gate_weights)
    yield _guarded(f"{DEFAULT_MODEL} load", _default_model)
    if out is not None:
        yield _guarded("output folder", lambda: _writable(out))


def _guarded(name: str, check: Callable[[], tuple[Status, str]]) -> Check:
    try:
        status, detail = check()
    # A diagnostic tool must report any failure as a row, whatever its type: a broken
    # install raises ImportError, OSError, RuntimeError, even AttributeError.
    except Exception as exc:  # noqa: BLE001
        status, detail = Status.FAIL, _one_line(exc)
    return Check(name, status, detail)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    # Our own errors are written for users; others need their type to make sense.
    return first if isinstance(exc, AttnvizError) else f"{type(exc).__name__}: {first}"


def _python() -> Check:
    version = platform.python_version()
    detail = f"{version} ({sys.executable})"
    if sys.version_info[:2] < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        return Check("Python", Status.FAIL, f"{detail}: attnviz needs {wanted} or newer")
    return Check("Python", Status.OK, detail)


def _package_version(module: str) -> tuple[Status, str]:
    imported = importlib.import_module(module)
    return Status.OK, str(getattr(imported, "__version__", "installed (version unknown)"))


def _cuda() -> tuple[Status, str]:
    import torch

    built = torch.version.cuda
    if not torch.cuda.is_available():
        why = (
            f"torch built for CUDA {built}, but no GPU or driver here"
            if built
            else ("torch is a CPU-only build")
        )
        return Status.INFO, f"not available ({why}); runs on the CPU"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    listed = ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names))
    return Status.OK, f"CUDA {built}: {listed}"


def _mps() -> tuple[Status, str]:
    import torch

    if torch.backends.mps.is_available():
        return Status.OK, "available (Apple GPU)"
    return Status.INFO, "not available (Apple GPUs only)"


def _threads() -> tuple[Status, str]:
    import torch

    from attnviz.engine.runner import forward_threads, io_workers

    fixed = " (OMP_NUM_THREADS)" if "OMP_NUM_THREADS" in os.environ else ""
    return Status.OK, (
        f"{os.cpu_count()} CPUs; torch would use {torch.get_num_threads()} threads, attnviz run "
        f"uses {forward_threads()} for the model{fixed} and {io_workers()} beside it"
    )


def _trunk_weights() -> tuple[Status, str]:
    from attnviz.models.registry import lite0_trunk_file

    return _weights_file(lite0_trunk_file())


def _gate_weights() -> tuple[Status, str]:
    from attnviz.models.registry import pretrained_file, shipped_file

    return _weights_file(pretrained_file(shipped_file(DEFAULT_MODEL)))


def _weights_file(path: Path) -> tuple[Status, str]:
    if not path.is_file():
        return Status.FAIL, f"{path}: not found"
    return Status.OK, f"{path} ({_size(path.stat().st_size)})"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.0f} kB"


def _default_model() -> tuple[Status, str]:
    """Load the default model offline and run it once on noise: finite logits and maps."""
    import numpy as np
    import torch

    from attnviz.api import capture, capture_arrays
    from attnviz.models import load_model
    from attnviz.models.outputs import logits_of

    start = time.perf_counter()
    model = load_model(DEFAULT_MODEL, device="cpu", size=SMOKE_SIZE)
    loaded_s = time.perf_counter() - start
    image = np.random.default_rng(0).integers(0, 256, (SMOKE_SIZE, SMOKE_SIZE, 3), np.uint8)
    with torch.inference_mode(), capture(model, "all") as maps:
        output = model(model.preprocess([image]))
    finite = bool(torch.isfinite(logits_of(output)).all()) and all(
        np.isfinite(a).all() for c in maps.values() for a in capture_arrays(c)
    )
    detail = f"weights loaded in {loaded_s:.2f} s; {SMOKE_SIZE}×{SMOKE_SIZE} forward pass"
    if not maps:
        return Status.FAIL, f"{detail} captured no attention map"
    if not finite:
        return Status.FAIL, f"{detail} gave NaN or infinite values"
    noun = "attention map" if len(maps) == 1 else "attention maps"
    return Status.OK, f"{detail}: {len(maps)} {noun}, all finite"


def _writable(folder: Path) -> tuple[Status, str]:
    """Whether files can be created where outputs go (the folder or its nearest parent)."""
    target = folder
    while not target.exists() and target.parent != target:
        target = target.parent
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".attnviz-doctor-"):
            pass
    except OSError as exc:
        return Status.WARN, f"{target}: cannot write here ({exc.strerror or exc})"
    return Status.OK, f"{folder.resolve()}: writable"


def doctor(ctx: typer.Context) -> None:
    """Check this installation: versions, GPUs, the default model's weights, the config file.

    Exits 1 when a check fails, so scripts and bug reports can rely on it.

    Example: attnviz doctor
    """
    from attnviz.cli.config import Defaults  # as _config_check: not on --help's path

    # The config's [run] section: this command's own default_map holds only [doctor]'s.
    config = ctx.meta.get(CONFIG_META)
    run_defaults = config.values.get("run", {}) if isinstance(config, Defaults) else {}
    checks = run_checks(Path(str(run_defaults.get("out", "attnviz-out"))))
    checks.append(_config_check(config))
    styles = {Status.OK: "green", Status.INFO: "cyan", Status.WARN: "yellow", Status.FAIL: "red"}
    title = f"attnviz {__version__} doctor"
    table = Table(title=title, title_justify="left")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        status = f"[{styles[check.status]}]{check.status.value:<6}[/]"
        table.add_row(check.name, status, printable(check.detail))
        lines.append(f"{check.name:<{width}}  {status} {printable(check.detail)}")
    unbounded = out_console.options.update(max_width=10_000)
    if out_console.measure(table, options=unbounded).maximum <= out_console.width:
        out_console.print(table)
    else:  # details hold paths the user may copy: one line each rather than a folded cell
        out_console.print(title)
        for line in lines:
            out_console.print(line, soft_wrap=True, highlight=False)
    if failed(checks):
        broken = ", ".join(c.name for c in checks if c.status is Status.FAIL)
        console.print(f"[bold red]broken:[/] {printable(broken)}", highlight=False)
        raise typer.Exit(1)


def _config_check(loaded: object) -> Check:
    """The config files in effect, as one of the doctor's rows."""
    from attnviz.cli.config import CONFIG_FILE, PYPROJECT_FILE, Defaults

    if isinstance(loaded, AttnvizError):
        return Check("config", Status.FAIL, str(loaded))
    files = loaded.files if isinstance(loaded, Defaults) else []
    if not files:
        return Check(
            "config", Status.INFO, f"no {CONFIG_FILE} or [tool.attnviz] in {PYPROJECT_FILE} here"
        )
    return Check("config", Status.OK, ", ".join(str(f) for f in files))
