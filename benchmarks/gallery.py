"""Gallery responsiveness: write_gallery and the page in headless Chromium, at 5,000 images.

    uv run python benchmarks/gallery.py [--count 5000] [--repeat 5] [--keep DIR]

Builds an output folder of --count small figures (hard links to a few, so thumbnails are
still made one per figure) and a manifest, then measures:

  - write_gallery, the first time (every thumbnail made) and again (none made);
  - in Debian's chromium (/usr/bin/chromium, via Playwright): time from navigation start
    to the page being ready, the page script alone, and each sort / filter change
    including the layout it causes; medians over --repeat page loads.

Targets live here, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from attnviz.render.gallery import write_gallery

CHROMIUM = "/usr/bin/chromium"
LAYERS = ("attention.block4", "attention.head")

# One change of a control, timed in the page up to the layout it causes.
_TIMED_CHANGE = """([id, value]) => {
  const t = performance.now();
  const el = document.getElementById(id);
  el.value = value;
  el.dispatchEvent(new Event(id === 'search' ? 'input' : 'change'));
  document.body.getBoundingClientRect();
  return performance.now() - t;
}"""

CHANGES = (
    ("sort", "max"),
    ("sort", "entropy"),
    ("dir", "asc"),
    ("layer", LAYERS[0]),
    ("sort", "name"),
    ("filter", "class 7"),
    ("filter", ""),
    ("search", "img00"),
    ("search", ""),
)


def make_folder(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    sources = []
    for k in range(5):
        rgb = rng.integers(0, 256, (200, 600, 3), dtype=np.uint8)
        sources.append(folder / f"src{k}.png")
        cv2.imwrite(str(sources[-1]), rgb)
    lines = []
    for i in range(count):
        name = f"img{i:05d}.png"
        os.link(sources[i % len(sources)], folder / name)
        stats = {
            layer: {
                "max": float(rng.uniform()),
                "entropy": float(rng.uniform()),
                "mass_top10": float(rng.uniform()),
                "mean": 0.3,
                "std": 0.1,
                "min": 0.0,
            }
            for layer in LAYERS
        }
        top5 = [
            {"index": k, "label": f"class {(i + k) % 40}", "prob": 0.5 / (k + 1)} for k in range(5)
        ]
        record = {"input": f"in/{name}", "outputs": {"figure": name}, "top5": top5, "maps": stats}
        lines.append(json.dumps(record))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def time_write(folder: Path) -> tuple[float, float]:
    t = time.perf_counter()
    write_gallery(folder)
    first = time.perf_counter() - t
    t = time.perf_counter()
    write_gallery(folder)
    return first, time.perf_counter() - t


def time_page(index: Path, repeat: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for _ in range(repeat):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(index.as_uri())
            page.wait_for_selector("html[data-ready=true]")
            ready = page.evaluate("window.attnvizGallery")
            times.setdefault("navigation start to ready", []).append(ready["readyAt"])
            times.setdefault("page script (parse data, build, first sort)", []).append(
                ready["buildMs"]
            )
            for control, value in CHANGES:
                ms = page.evaluate(_TIMED_CHANGE, [control, value])
                times.setdefault(f"{control} = {value!r}", []).append(ms)
            t = time.perf_counter()
            page.click("#grid .item >> nth=0")
            page.wait_for_selector("#viewer[open]")
            times.setdefault("open viewer (round trip)", []).append(
                1000 * (time.perf_counter() - t)
            )
            page.close()
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the folder here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "out"
        folder.mkdir(parents=True, exist_ok=True)
        make_folder(folder, args.count)
        first, again = time_write(folder)
        size = (folder / "index.html").stat().st_size
        print(f"{args.count} images; index.html {size / 1e6:.1f} MB")
        print(f"write_gallery: {first:.2f} s first (all thumbnails), {again:.2f} s rerun")
        for name, values in time_page(folder / "index.html", args.repeat).items():
            print(f"  {name:<45} median {statistics.median(values):7.1f} ms")


if __name__ == "__main__":
    main()
