"""Images/s of run_on_ray against attnviz.engine.pipeline.run on the same photos, one machine.

    uv run python benchmarks/ray_local.py [COUNT]

Takes COUNT photos (default 50) of ../shared/data/imagenet-sample, runs the plain pipeline,
then run_on_ray with one and two actors on a local Ray runtime, and checks the figures
are the same bytes. On one machine Ray only adds cost; it is there for clusters.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Under `uv run`, Ray would otherwise build a fresh environment for every worker.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def main() -> int:
    import ray

    from attnviz.engine.options import RunOptions
    from attnviz.engine.pipeline import run
    from attnviz.integrations.ray_data import run_on_ray

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    work = Path(tempfile.mkdtemp(prefix="attnviz-ray-bench-"))
    photos = work / "photos"
    photos.mkdir()
    for path in sorted(SAMPLE.iterdir())[:count]:
        shutil.copy(path, photos / path.name)

    def options(name: str) -> RunOptions:
        return RunOptions(inputs=[photos], out=work / name, device="cpu", batch_size=8)

    summary = run(options("plain"))
    print(f"pipeline.run: {summary.processed / summary.wall_s:.2f} images/s")
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - start:.1f} s")
    for actors in (1, 2):
        summary = run_on_ray(options(f"ray{actors}"), concurrency=actors)
        print(f"run_on_ray, {actors} actor(s): {summary.processed / summary.wall_s:.2f} images/s")
    same = all(
        filecmp.cmp(p, work / "ray2" / p.name, shallow=False)
        for p in (work / "plain").glob("*.png")
    )
    print(f"figures identical to attnviz run: {same}")
    ray.shutdown()
    shutil.rmtree(work)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
