"""attnviz on Ray Data: the Ray path on a tiny folder, on a local Ray runtime.

Starting Ray takes seconds, so one runtime serves the whole module and the tests are few.
Without Ray installed they skip, except in CI (``CI`` set), where Ray is a dev dependency
and a skip would hide a broken install.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from attnviz.engine.options import RunOptions
from attnviz.engine.pipeline import run
from attnviz.errors import AttnvizError, UsageError
from attnviz.io import read_manifest
from tests.conftest import write_photo

PHOTOS = [f"p{i}.png" for i in range(4)]
BROKEN = "broken.jpg"
# Ray's batches differ from attnviz run's (8): the figures must not depend on batching.
RAY_BATCH = 2

# Ray Data's own deprecation notices about its own settings: nothing attnviz can act on.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")


def _require_ray() -> None:
    try:
        importlib.import_module("ray.data")
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed, but CI must run the Ray tests (uv sync)")
        pytest.skip("ray is not installed (pip install 'attnviz[ray]')")


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[ModuleType]:
    # Under `uv run`, Ray's uv integration would copy the project and build a new virtual
    # environment for the workers; on one machine they can use this interpreter. Read by
    # Ray when it is imported, so set first.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    _require_ray()
    import ray
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four photos and one file that is not an image."""
    root = tmp_path_factory.mktemp("ray-photos")
    for seed, name in enumerate(PHOTOS):
        write_photo(root / name, size=(96 + 16 * seed, 64), seed=seed)
    (root / BROKEN).write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def plain(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `attnviz run` writes for the folder, to compare the Ray path with."""
    out = tmp_path_factory.mktemp("plain") / "out"
    summary = run(RunOptions(inputs=[folder], out=out, device="cpu"))
    assert summary.processed == len(PHOTOS) and len(summary.failed) == 1
    return out


def _by_input(out: Path) -> dict[str, dict[str, object]]:
    records = read_manifest(out / "manifest.jsonl")
    by_input = {Path(str(r["input"])).name: r for r in records}
    assert len(by_input) == len(records), "one record per input"
    return by_input


@pytest.mark.usefixtures("ray_runtime")
def test_run_on_ray_writes_what_attnviz_run_writes_and_resumes(
    folder: Path, plain: Path, tmp_path: Path
) -> None:
    from attnviz.integrations.ray_data import run_on_ray

    out = tmp_path / "out"
    options = RunOptions(inputs=[folder], out=out, device="cpu")
    summary = run_on_ray(options, concurrency=2, batch_size=RAY_BATCH)

    assert summary.processed == len(PHOTOS)
    assert [Path(path).name for path, _ in summary.failed] == [BROKEN]
    for name in PHOTOS:
        assert (out / name).read_bytes() == (plain / name).read_bytes(), name
    records, expected = _by_input(out), _by_input(plain)
    assert sorted(records) == sorted([*PHOTOS, BROKEN])
    assert "cannot decode" in str(records[BROKEN]["error"])
    for name in PHOTOS:
        # Same settings key and fingerprint: either command can resume the other's run.
        assert records[name] == expected[name], name
    assert sorted(p.name for p in out.iterdir()) == sorted([*PHOTOS, "manifest.jsonl"])

    written = {name: (out / name).stat().st_mtime_ns for name in PHOTOS}
    again = run_on_ray(options, concurrency=2, batch_size=RAY_BATCH)
    assert (again.processed, again.skipped, len(again.failed)) == (0, len(PHOTOS), 1)
    assert {name: (out / name).stat().st_mtime_ns for name in PHOTOS} == written
    assert sorted(_by_input(out)) == sorted([*PHOTOS, BROKEN])


@pytest.mark.usefixtures("ray_runtime")
def test_relative_paths_mean_this_folder_even_where_the_actors_run_elsewhere(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actors started in another folder (Ray was started elsewhere; `uv run` gives them
    a copy of this one): the figures still go beside this folder's manifest."""
    from attnviz.integrations.ray_data import run_on_ray

    (tmp_path / "photos").symlink_to(folder)
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "gated.py").write_text(GATED_NET)
    monkeypatch.chdir(tmp_path)
    options = RunOptions(inputs=[Path("photos")], out=Path("maps"), model="nets/gated.py:build")
    summary = run_on_ray(options, concurrency=1)
    assert summary.processed == len(PHOTOS)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        [*PHOTOS, "manifest.jsonl"]
    )
    records = _by_input(tmp_path / "maps")
    assert {r["input"] for r in records.values()} == {f"photos/{name}" for name in records}
    assert {r.get("model") for r in records.values() if "error" not in r} == {options.model}


# A user's network in a file of its own: one CBAM-style spatial gate.
GATED_NET = """\
import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(pooled))


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), Gate(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
"""


@pytest.mark.usefixtures("ray_runtime")
def test_mapper_in_a_hand_built_pipeline(folder: Path, plain: Path, tmp_path: Path) -> None:
    import ray.data

    from attnviz.integrations.ray_data import AttnvizBatchMapper
    from attnviz.io import ManifestWriter

    out = tmp_path / "maps"
    options = RunOptions(inputs=[], out=out, batch_size=RAY_BATCH, device="cpu")
    rows = [{"path": str(folder / name), "relative": f"sub/{name}"} for name in PHOTOS]
    rows.append({"path": str(folder / "missing.png"), "relative": "missing.png"})
    dataset = ray.data.from_items(rows).map_batches(
        AttnvizBatchMapper,
        fn_constructor_kwargs={"options": options},
        batch_size=RAY_BATCH,
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="numpy",
    )
    out.mkdir()
    with ManifestWriter(out) as manifest:
        for row in dataset.iter_rows():
            manifest.add(json.loads(row["record"]))

    records = _by_input(out)
    assert sorted(records) == sorted([*PHOTOS, "missing.png"])
    assert "error" in records["missing.png"]  # one bad input does not stop the job
    for name in PHOTOS:
        assert records[name]["outputs"] == {"figure": f"sub/{name}"}
        assert (out / "sub" / name).read_bytes() == (plain / name).read_bytes(), name


def test_options_ray_cannot_honour_are_usage_errors(tmp_path: Path) -> None:
    _require_ray()
    from attnviz.integrations import ray_data

    photo = write_photo(tmp_path / "a.png")
    for options, kwargs in [
        (RunOptions(inputs=[photo], out=tmp_path / "o", norm="global"), {}),
        (RunOptions(inputs=[photo], out=tmp_path / "o", shard="0/2"), {}),
        (RunOptions(inputs=[photo], out=tmp_path / "o", device="cuda"), {}),
        (RunOptions(inputs=[photo], out=tmp_path / "o"), {"concurrency": 0}),
    ]:
        with pytest.raises(UsageError):
            ray_data.run_on_ray(options, **kwargs)
    assert not (tmp_path / "o").exists(), "checked before anything is written"


def test_without_ray_the_import_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    monkeypatch.delitem(sys.modules, "attnviz.integrations.ray_data", raising=False)
    with pytest.raises(ImportError) as raised:
        importlib.import_module("attnviz.integrations.ray_data")
    assert isinstance(raised.value, AttnvizError)
    assert "pip install 'attnviz[ray]'" in str(raised.value)
