"""Shared fixtures: photos written by the tests, toy attention models, the shared data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_photo(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """A synthetic photo (width, height): smooth background plus a bright disc at a seeded spot."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.2 * min(w, h)) ** 2
    image = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), np.full_like(xx, 80)], -1)
    image[disc] = rng.integers(0, 256, 3)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def attnviz(*args: str | Path) -> tuple[int, str]:
    """Run the real CLI in-process: (exit code, output)."""
    from typer.testing import CliRunner

    from attnviz.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    crash = result.exception
    # The CLI may only end through its exit codes: any other exception is a crash.
    assert crash is None or isinstance(crash, SystemExit), repr(crash)
    return result.exit_code, result.output


def summary_count(output: str, row: str) -> int:
    """A number from the run's summary table: "processed", "up to date" or "failed"."""
    match = re.search(rf"{row}\s*│\s*(\d+)", output)
    assert match, output
    return int(match.group(1))


@pytest.fixture(scope="module")
def training_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve small synthetic photos: enough for short real training runs."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(12):
        write_photo(folder / f"p{i}.png", size=(80, 64), seed=i)
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (a user's clone)")
    return SHARED_DATA


# Test tiers, read off what a test uses, so a new test lands in the right one by itself:
# `uv run pytest -m "not slow"` is the quick developer run (see the README).
TIER_BY_FIXTURE = {
    "page": "browser",  # a real headless Chromium (tests/test_gallery.py)
    "ray_runtime": "ray",  # a local Ray cluster
    "shared_data": "data",  # ../shared/data, absent from a user's clone
    "training_photos": "training",  # short real training runs
    "attnviz_process": "subprocess",  # the CLI started in a process of its own
}
# Whole modules that start processes, train, or run the docs' commands (test_interruptions
# also holds three quick in-process tests of the same guarantees, kept beside the others).
TIER_BY_MODULE = {
    "test_interruptions": "subprocess",
    "test_docs": "docs",
    "test_train": "training",
    "test_train_block": "training",
    "test_properties": "properties",
    "test_discovery_libraries": "libraries",
}
SLOW_TIERS = frozenset({"browser", "ray", "data", "training", "subprocess", "docs", "properties"})


def pytest_configure(config: pytest.Config) -> None:
    for tier in {*TIER_BY_FIXTURE.values(), *TIER_BY_MODULE.values(), "slow"}:
        config.addinivalue_line("markers", f"{tier}: a test tier (see tests/conftest.py)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {tier for name, tier in TIER_BY_FIXTURE.items() if name in item.fixturenames}
        tiers.add(TIER_BY_MODULE.get(item.module.__name__.rpartition(".")[2], ""))  # type: ignore[union-attr]
        tiers.discard("")
        tiers |= {mark.name for mark in item.iter_markers()} & SLOW_TIERS  # placed by hand
        for tier in tiers:
            item.add_marker(tier)
        if tiers & SLOW_TIERS:
            item.add_marker("slow")
