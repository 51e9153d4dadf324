"""Spec of the gallery: index.html of an output folder, checked on disk and in a real browser."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from attnviz.errors import AttnvizError
from attnviz.render import write_gallery
from attnviz.render.gallery import THUMB_BOX

CHROMIUM = Path("/usr/bin/chromium")
# Hostile but legal file names: HTML metacharacters, a script end tag (a folder and a file),
# URL metacharacters, and a name that is not UTF-8 (a surrogate escape in Python).
WEIRD = 'we<ir"d & co.png'
SCRIPT = "x</script><b>y.png"
URLISH = "100% #1?.png"
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")


def _write_figure(path: Path, seed: int, size: tuple[int, int] = (600, 200)) -> None:
    """A figure-like PNG (width, height): a pure red left third, noise elsewhere."""
    w, h = size
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[:, : w // 3] = (255, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())


def _stats(peak: float, entropy: float | None, mass: float) -> dict[str, Any]:
    stats: dict[str, Any] = {"shape": [7, 7], "min": 0.0, "max": peak, "mean": peak / 2}
    stats.update({"std": 0.1, "mass_top10": mass, "peak_xy": [1.0, 2.0]})
    if entropy is not None:  # old manifests have no entropy
        stats["entropy"] = entropy
    return stats


def _record(figure: str, label: str, prob: float, peak: float, entropy: float | None) -> dict:
    top5 = [{"index": 1, "label": label, "prob": prob}]
    top5 += [{"index": 10 + k, "label": f"other {k}", "prob": 0.01} for k in range(4)]
    return {
        "input": f"photos/{figure}",
        "outputs": {"figure": figure, "raw": figure + ".npz"},
        "model": "toy",
        "image_size": [240, 80],
        "layers": ["attention.head"],
        "top5": top5,
        "maps": {"attention.head": _stats(peak, entropy, 0.2 + peak / 10)},
    }


def _write_manifest(out: Path, records: list[dict[str, Any]]) -> None:
    # ensure_ascii: the manifest must carry the non-UTF-8 name, as attnviz's own writer does.
    lines = [json.dumps(r, ensure_ascii=True) for r in records]
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


# name -> (top-1 class, peak, entropy or None)
FIGURES: dict[str, tuple[str, float, float | None]] = {
    "a.png": ("cat", 0.9, 0.30),
    "sub/b.png": ("dog", 0.5, 0.80),
    WEIRD: ("cat", 0.7, 0.55),
    SCRIPT: ("cat", 0.2, 0.10),
    URLISH: ("bird", 0.4, 0.95),
    NOT_UTF8: ("dog", 0.6, None),
}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder as `attnviz run` leaves it: figures, a failed input, the manifest."""
    folder = tmp_path / "out"
    records = []
    for seed, (name, (label, peak, entropy)) in enumerate(FIGURES.items()):
        _write_figure(folder / name, seed)
        records.append(_record(name, label, 0.5 + seed / 20, peak, entropy))
    records.insert(2, {"input": "photos/broken.jpg", "error": "cannot decode image"})
    _write_manifest(folder, records)
    return folder


def _page_data(index: Path) -> dict[str, Any]:
    """The JSON the page embeds, cut out the way a browser's HTML parser would."""
    html = index.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    assert match is not None
    return json.loads(match.group(1))


# --- on disk ----------------------------------------------------------------------------------


def test_gallery_lists_every_figure_and_counts_failures(out: Path) -> None:
    result = write_gallery(out)

    assert result.path == out / "index.html" and result.path.is_file()
    assert (result.items, result.failed, result.thumbnails_made) == (len(FIGURES), 1, 6)
    assert result.notes == []
    data = _page_data(result.path)
    assert sorted(item["n"] for item in data["items"]) == sorted(FIGURES)
    assert data["failed"] == [["photos/broken.jpg", "cannot decode image"]]


def test_page_is_self_contained(out: Path) -> None:
    html = write_gallery(out).path.read_text(encoding="utf-8")

    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<(script|img|iframe)\b[^>]*\bsrc=", html)
    assert not re.search(r"<link\b(?![^>]*href=\"data:)", html)
    assert "@import" not in html and "url(" not in html


def test_file_names_cannot_break_out_of_the_data(out: Path) -> None:
    html = write_gallery(out).path.read_text(encoding="utf-8")

    # Exactly the page's own two script elements end; no name closes one early.
    assert html.count("</script>") == 2
    names = {item["n"] for item in _page_data(out / "index.html")["items"]}
    assert {WEIRD, SCRIPT, URLISH, NOT_UTF8} <= names


def test_links_are_encoded_relative_urls(out: Path) -> None:
    items = {item["n"]: item for item in _page_data(write_gallery(out).path)["items"]}

    assert items["sub/b.png"]["f"] == "sub/b.png"
    assert items[URLISH]["f"] == "100%25%20%231%3F.png"
    assert items[NOT_UTF8]["f"] == "caf%E9.png"  # the file's own bytes, not UTF-8 of U+FFFD
    assert items["a.png"]["t"] == ".thumbs/a.jpg"


def test_thumbnails_are_small_rgb_jpegs_next_to_a_mirror_of_the_figures(out: Path) -> None:
    write_gallery(out)

    thumbs = out / ".thumbs"
    assert (thumbs / "sub" / "b.jpg").is_file()
    assert (thumbs / "x<" / "script><b>y.jpg").is_file()
    bgr = cv2.imread(str(thumbs / "a.jpg"))
    assert bgr is not None and bgr.shape[1] <= THUMB_BOX and bgr.shape[0] <= THUMB_BOX
    assert bgr.shape[:2] == (THUMB_BOX // 3, THUMB_BOX)  # a 600x200 figure, scaled down
    # The figure's left third is pure red: a BGR mix-up would make it blue.
    b, g, r = bgr[:, : bgr.shape[1] // 4].reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 40 and b < 40


def test_rerun_remakes_only_thumbnails_of_changed_figures(out: Path) -> None:
    write_gallery(out)
    thumb = out / ".thumbs" / "a.jpg"
    made_at = thumb.stat().st_mtime_ns

    again = write_gallery(out)
    assert again.thumbnails_made == 0 and again.items == len(FIGURES)
    assert thumb.stat().st_mtime_ns == made_at

    later = made_at + 5_000_000_000
    os.utime(out / "sub" / "b.png", ns=(later, later))
    assert write_gallery(out).thumbnails_made == 1


def test_missing_or_unreadable_figures_are_left_out_with_a_note(out: Path) -> None:
    (out / "a.png").unlink()
    (out / "sub" / "b.png").write_bytes(b"not a png at all")
    seen: list[tuple[int, int]] = []

    result = write_gallery(out, progress=lambda done, total: seen.append((done, total)))

    assert result.items == len(FIGURES) - 2
    assert any(n.startswith("a.png:") and "missing" in n for n in result.notes)
    assert any(n.startswith("sub/b.png:") and "cannot read" in n for n in result.notes)
    assert seen[0] == (0, len(FIGURES)) and seen[-1] == (len(FIGURES), len(FIGURES))
    assert _page_data(result.path)["notes"] == result.notes


def test_separate_layout_shows_the_map_and_other_outputs_are_not_items(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    for name in ("x_original.png", "x_map.png", "x_weighted.png"):
        _write_figure(folder / name, seed=1)
    separate = _record("unused.png", "cat", 0.9, 0.5, 0.5)
    separate["outputs"] = {"original": "x_original.png", "map": "x_map.png", "raw": "x.npz"}
    layers = _record("unused.png", "cat", 0.9, 0.5, 0.5)
    layers["outputs"] = {
        f"{layer}:{panel}": f"y.{layer}.{panel}.png"
        for layer in ("block4", "head")
        for panel in ("map-key", "original", "map")
    }
    for name in layers["outputs"].values():
        _write_figure(folder / name, seed=2)
    video = _record("v.png", "cat", 0.9, 0.5, 0.5)
    video["outputs"] = {"video": "v.mp4", "gif": "v.gif"}
    escape = _record("unused.png", "cat", 0.9, 0.5, 0.5)
    escape["outputs"] = {"figure": "../elsewhere.png"}
    _write_manifest(folder, [separate, layers, video, escape])

    result = write_gallery(folder)

    shown = [item["n"] for item in _page_data(result.path)["items"]]
    assert shown == ["x_map.png", "y.head.map.png"]
    assert any("outside the output folder" in n for n in result.notes)


# A figure of several layers as `run --layer all` records it: each layer's map at its box.
LAYER_BOXES = {
    "block4": [10, 20, 200, 150],
    "block10": [10, 190, 200, 150],
    "blocks[3] head": [250, 190, 900, 300],  # wider than THUMB_BOX, and a name unsafe on disk
}
LAYER_COLOURS = {"block4": (0, 200, 0), "block10": (0, 0, 255), "blocks[3] head": (255, 255, 0)}


def _write_layered_figure(path: Path, boxes: dict[str, list[int]]) -> None:
    """A white 1200x520 figure with each layer's map a flat colour in its box."""
    rgb = np.full((520, 1200, 3), 255, np.uint8)
    for layer, (x, y, w, h) in boxes.items():
        rgb[y : y + h, x : x + w] = LAYER_COLOURS.get(layer, (90, 90, 90))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _layered_record(figure: str, boxes: dict[str, list[int]] | None) -> dict[str, Any]:
    record = _record(figure, "cat", 0.9, 0.5, 0.5)
    record["layers"] = list(LAYER_BOXES)
    record["maps"] = {layer: _stats(0.3 + k / 10, 0.5, 0.3) for k, layer in enumerate(LAYER_BOXES)}
    if boxes is not None:
        record["map_boxes"] = boxes
    return record


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    """An output folder of `--layer all` figures: one recording its map boxes, one from
    before map boxes were recorded, and a one-layer figure that records its box."""
    folder = tmp_path / "layered"
    _write_layered_figure(folder / "multi.png", LAYER_BOXES)
    _write_layered_figure(folder / "old.png", LAYER_BOXES)
    _write_figure(folder / "single.png", seed=3)
    single = _record("single.png", "dog", 0.8, 0.5, 0.5)
    single["layers"] = ["blocks[3] head"]
    single["maps"] = {"blocks[3] head": _stats(0.5, 0.5, 0.3)}
    single["map_boxes"] = {"blocks[3] head": [0, 0, 100, 100]}
    records = [_layered_record("multi.png", LAYER_BOXES), _layered_record("old.png", None), single]
    _write_manifest(folder, records)
    return folder


def test_a_figure_of_several_layers_gets_a_thumbnail_of_each_layers_map(layered: Path) -> None:
    result = write_gallery(layered)

    assert result.thumbnails_made == 3 + len(LAYER_BOXES)  # three figures, multi's layers
    items = {item["n"]: item for item in _page_data(result.path)["items"]}
    assert items["old.png"]["lt"] == {} and items["single.png"]["lt"] == {}
    thumbs = items["multi.png"]["lt"]
    assert list(thumbs) == list(LAYER_BOXES)
    assert thumbs["block4"] == [".thumbs/multi.png%40block4.jpg", 200, 150]
    assert thumbs["blocks[3] head"] == [".thumbs/multi.png%40blocks_3__head.jpg", THUMB_BOX, 160]
    for layer, colour in LAYER_COLOURS.items():
        bgr = cv2.imread(str(layered / ".thumbs" / f"multi.png@{_safe(layer)}.jpg"))
        assert bgr is not None
        # The crop is the map alone: no white of the gutters, no other layer's colour.
        rgb = bgr[..., ::-1].reshape(-1, 3).astype(int)
        assert np.abs(rgb - colour).max() < 30, layer
    assert items["multi.png"]["t"] == ".thumbs/multi.jpg"  # the viewer's whole figure stays


def _safe(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer)


def test_layer_thumbnails_are_remade_only_when_their_figure_changes(layered: Path) -> None:
    write_gallery(layered)
    block4 = layered / ".thumbs" / "multi.png@block4.jpg"
    made_at = block4.stat().st_mtime_ns

    assert write_gallery(layered).thumbnails_made == 0
    assert block4.stat().st_mtime_ns == made_at

    block4.unlink()  # one lost thumbnail is made again, alone
    assert write_gallery(layered).thumbnails_made == 1 and block4.is_file()

    later = made_at + 5_000_000_000
    os.utime(layered / "multi.png", ns=(later, later))
    assert write_gallery(layered).thumbnails_made == 1 + len(LAYER_BOXES)


def test_layer_names_that_clash_on_disk_and_boxes_outside_the_figure(layered: Path) -> None:
    boxes = {"a b": [0, 0, 50, 50], "a_b": [60, 0, 50, 50], "gone": [1150, 500, 100, 100]}
    record = _layered_record("multi.png", boxes)
    _write_manifest(layered, [record])

    result = write_gallery(layered)

    assert result.items == 1 and result.notes == []
    thumbs = _page_data(result.path)["items"][0]["lt"]
    # Each layer its own file; a box the figure does not hold falls back to the whole figure.
    assert [url for url, _, _ in thumbs.values()] == [
        ".thumbs/multi.png%40a_b.jpg", ".thumbs/multi.png%40a_b-2.jpg",
    ]  # fmt: skip
    assert list(thumbs) == ["a b", "a_b"]


def test_not_an_output_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(AttnvizError, match="no such output folder"):
        write_gallery(tmp_path / "nope")
    with pytest.raises(AttnvizError, match="manifest.jsonl"):
        write_gallery(tmp_path)


# --- in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless chromium, driven by Playwright (never downloads a browser)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium to run browser tests)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that records every console error or warning and uncaught exception."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.problems = []
    tab.on(
        "console",
        lambda m: (
            tab.problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else 0
        ),
    )
    tab.on("pageerror", lambda exc: tab.problems.append(f"pageerror: {exc}"))
    try:
        yield tab
    finally:
        context.close()


def _open(page: Any, index: Path) -> None:
    page.goto(index.as_uri())
    page.wait_for_selector("html[data-ready=true]", timeout=30_000)


def _shown_names(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#grid .item",
        "els => els.filter(e => !e.hidden).map(e => e.querySelector('.name').textContent)",
    )


def _choose(page: Any, selector: str, value: str) -> None:
    page.select_option(selector, value)


def test_page_works_in_chromium(out: Path, page: Any, tmp_path: Path) -> None:
    _open(page, write_gallery(out).path)

    by_name = _shown_names(page)
    assert len(by_name) == len(FIGURES)
    assert page.text_content("#count") == f"{len(FIGURES)} images"
    assert "1 input failed" in page.text_content("#problems summary")
    # Every thumbnail loaded, whatever characters its file name holds.
    loaded = page.eval_on_selector_all("#grid .item img", "els => els.map(e => e.naturalWidth)")
    assert all(width > 0 for width in loaded)

    _choose(page, "#sort", "entropy")
    assert page.input_value("#dir") == "desc"
    by_entropy = _shown_names(page)
    with_entropy = [n for n, (_, _, e) in FIGURES.items() if e is not None]
    expected = sorted(with_entropy, key=lambda n: -(FIGURES[n][2] or 0)) + [NOT_UTF8]
    assert by_entropy == expected != by_name
    _choose(page, "#dir", "asc")
    assert _shown_names(page) == expected[-2::-1] + [NOT_UTF8]  # missing stays last

    _choose(page, "#filter", "cat")
    cats = _shown_names(page)
    assert sorted(cats) == sorted(n for n, (label, _, _) in FIGURES.items() if label == "cat")
    assert page.text_content("#count") == f"3 of {len(FIGURES)} images"
    _choose(page, "#filter", "")

    page.click(f"#grid .item:has-text('{cats[0]}')")
    page.wait_for_selector("#viewer[open]")
    assert page.locator("#viewer .top5 li").count() == 5
    assert page.text_content("#viewer .vname") == cats[0]
    page.wait_for_function("document.getElementById('vimg').naturalWidth > 0")
    page.screenshot(path=str(tmp_path / "viewer.png"))
    page.keyboard.press("ArrowRight")
    assert page.text_content("#viewer .vname") != cats[0]
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden")

    shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None and shot.std() > 20, "the page looks blank"
    assert page.problems == []


def test_five_thousand_images_load_sort_and_filter(tmp_path: Path, page: Any) -> None:
    folder = tmp_path / "big"
    sources = []
    for k in range(5):
        sources.append(folder / f"src{k}.png")
        _write_figure(sources[-1], seed=k, size=(60, 20))
    records = []
    rng = np.random.default_rng(0)
    peaks = rng.uniform(0, 1, 5000)
    for i, peak in enumerate(peaks):
        name = f"img{i:04d}.png"
        os.link(sources[i % 5], folder / name)  # thumbnails are still made one per figure
        records.append(_record(name, f"class {i % 40}", 0.5, float(peak), 0.5))
    _write_manifest(folder, records)
    assert write_gallery(folder).items == 5000

    _open(page, folder / "index.html")
    assert page.locator("#grid .item").count() == 5000
    assert page.text_content("#count") == "5,000 images"
    sort_ms = page.evaluate(
        """() => {
          const t = performance.now();
          const sort = document.getElementById('sort');
          sort.value = 'max';
          sort.dispatchEvent(new Event('change'));
          document.body.getBoundingClientRect();  // include the layout the change causes
          return performance.now() - t;
        }"""
    )
    names = _shown_names(page)
    assert names == [f"img{i:04d}.png" for i in np.argsort(-peaks, kind="stable")]
    _choose(page, "#filter", "class 7")
    assert len(_shown_names(page)) == 125
    build_ms = page.evaluate("window.attnvizGallery.buildMs")
    print(f"\n5,000 items: page script {build_ms:.0f} ms, sort by peak {sort_ms:.0f} ms")
    assert page.problems == []


def test_run_with_gallery_then_gallery_command_in_chromium(tmp_path: Path, page: Any) -> None:
    """End to end: the real CLI on real photos with the shipped model, then the page."""
    from tests.conftest import attnviz, write_photo

    photos = tmp_path / "photos"
    for seed in range(3):
        write_photo(photos / f"p{seed}.jpg", (120, 90), seed=seed)
    out = tmp_path / "out"
    code, output = attnviz("run", photos, "--out", out, "--gallery")
    assert code == 0, output
    index = out / "index.html"
    assert index.is_file()
    _open(page, index)
    assert sorted(_shown_names(page)) == ["p0.png", "p1.png", "p2.png"]
    assert page.problems == []

    # `attnviz gallery OUT` remakes the page of an existing folder, here after one more photo.
    write_photo(photos / "p3.jpg", (90, 120), seed=3)
    assert attnviz("run", photos, "--out", out)[0] == 0
    index.unlink()
    code, output = attnviz("gallery", out)
    assert code == 0, output
    _open(page, index)
    assert len(_shown_names(page)) == 4
    assert page.problems == []


def _thumb_srcs(page: Any) -> dict[str, str]:
    return dict(
        page.eval_on_selector_all(
            "#grid .item",
            "els => els.map(e => [e.querySelector('.name').textContent,"
            " e.querySelector('img').getAttribute('src')])",
        )
    )


def test_the_layer_menu_shows_that_layers_map_on_the_cards(layered: Path, page: Any) -> None:
    _open(page, write_gallery(layered).path)

    # The deepest layer is chosen at first; a card without its thumbnail shows the figure.
    assert page.input_value("#layer") == "blocks[3] head"
    assert _thumb_srcs(page) == {
        "multi.png": ".thumbs/multi.png%40blocks_3__head.jpg",
        "old.png": ".thumbs/old.jpg",
        "single.png": ".thumbs/single.jpg",
    }
    _choose(page, "#layer", "block10")
    srcs = _thumb_srcs(page)
    assert srcs["multi.png"] == ".thumbs/multi.png%40block10.jpg"
    assert srcs["old.png"] == ".thumbs/old.jpg" and srcs["single.png"] == ".thumbs/single.jpg"
    page.wait_for_function(
        "[...document.querySelectorAll('#grid .item img')].every(e => e.complete && e.naturalWidth)"
    )
    # The viewer still shows the whole figure.
    page.click("#grid .item:has-text('multi.png')")
    page.wait_for_selector("#viewer[open]")
    assert page.get_attribute("#vimg", "src") == "multi.png"
    assert page.problems == []


def test_run_layer_all_gallery_in_chromium(tmp_path: Path, page: Any) -> None:
    """End to end: a model of four layers, the real CLI, then choosing layers on the page."""
    from tests.conftest import attnviz, write_photo

    photos = tmp_path / "photos"
    for seed in range(2):
        write_photo(photos / f"p{seed}.jpg", (90, 60), seed=seed)
    out = tmp_path / "out"
    code, output = attnviz("run", photos, "--out", out, "--model", "lite0-cbam", "--layer", "all",
                           "--panel-height", "100", "--gallery")  # fmt: skip
    assert code == 0, output
    layers = ["attention.block4", "attention.block10", "attention.block15", "attention.head"]
    assert len(list((out / ".thumbs").glob("*@*.jpg"))) == 2 * len(layers)
    _open(page, out / "index.html")
    for layer in layers:
        _choose(page, "#layer", layer)
        assert _thumb_srcs(page) == {
            f"p{k}.png": f".thumbs/p{k}.png%40{layer}.jpg" for k in range(2)
        }
    page.wait_for_function(
        "[...document.querySelectorAll('#grid .item img')].every(e => e.complete && e.naturalWidth)"
    )
    # A layer's map panel is as wide as the photo's (150 px at 100 px tall), not the figure.
    widths = page.eval_on_selector_all("#grid .item img", "els => els.map(e => e.naturalWidth)")
    assert widths == [150, 150]
    page.screenshot(path=str(tmp_path / "layers.png"))
    assert page.problems == []
