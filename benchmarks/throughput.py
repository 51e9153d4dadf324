"""Throughput: how close `attnviz run` comes to the model's own forward pass, in one run.

    uv run --group bench python benchmarks/throughput.py [--images DIR] [--count 200]
        [--model NAME] [--threads N] [--rss-counts 200,2000] [--json results.json]

On the same photos (the first --count of DIR, default ../shared/data/imagenet-sample, or
generated ones when it is absent) and the same model (default: attnviz's default model, on
the CPU), it measures images/s of:

  (a) forward only: preprocessed tensors through the model with the capture hooks on all
      --threads threads, at batch 1 and at batch 8; the better is the bound;
  (b) I/O only: decode, render a triptych from a fixed map, encode PNG, write (no model);
  (c) end to end: `attnviz run FOLDER` as a user runs it (its own process, its own thread
      choice; start-up is measured separately: `attnviz --help`, `attnviz run one.jpg`
      and a usage error);
  (d) a plain per-image loop as a user would write it with attnviz's notebook API: PIL
      open, forward inside `attnviz.capture`, OpenCV colormap overlay, cv2.imwrite;
  (e) pytorch-grad-cam's usual loop: GradCAM on the last feature map, show_cam_on_image,
      cv2.imwrite;
  (f) torchcam's usual loop: its GradCAM extractor on the same layer, overlay_mask, save;

then the ratios c / a (goal 0.8), c / e and c / f (goal 2 each; issue 19's goals) and c / d
for reference, all with (c) less its start-up (timed with one photo, which leaves with it),
and the peak RSS of `attnviz run` at each of --rss-counts images (the extra photos are hard
links to the first ones). (e) and (f) need the `bench` dependency group. Processes are
timed after one warm-up run, with bytecode caching on (as on a user's machine). Throughput
targets live here, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

import attnviz
from attnviz.attention import select_layers
from attnviz.attention.capture import capturing, layer_capturer
from attnviz.engine.gradcam import last_feature_layer, trunk_mode
from attnviz.io import IMAGE_SUFFIXES, decode_image, write_image
from attnviz.render import LayerMaps, render_triptych

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"
ATTNVIZ = [sys.executable, "-m", "attnviz"]


def photos_for(folder: Path | None, count: int, work: Path) -> list[Path]:
    """The first `count` photos of `folder` (sorted), or generated ones."""
    if folder is not None and folder.is_dir():
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(found) >= count:
            return found[:count]
    rng = np.random.default_rng(0)
    made = work / "generated"
    made.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        h, w = int(rng.integers(200, 300)), int(rng.integers(240, 380))
        base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 6)
        path = made / f"photo{i:05d}.jpg"
        Image.fromarray(base).save(path, quality=90)
        paths.append(path)
    return paths


def folder_of(photos: list[Path], folder: Path) -> Path:
    """A folder holding exactly `photos` (hard links, or copies across file systems)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(photos):
        target = folder / f"{i:05d}{photo.suffix.lower()}"
        try:
            os.link(photo, target)
        except OSError:
            shutil.copy(photo, target)
    return folder


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_only(model: attnviz.models.LoadedModel, photos: list[Path], batch: int) -> float:
    """(a): preprocessing done beforehand; only the forward pass with hooks is timed."""
    images = [decode_image(p).rgb for p in photos]
    batches = [model.preprocess(images[i : i + batch]) for i in range(0, len(images), batch)]
    # The layers resolved once, as attnviz's runner does, not searched for at every batch.
    layers = select_layers(model.net, model.spec.default_layer)
    capturers = {name: layer_capturer(model.net, name) for name in layers}

    def run(batches: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for x in batches:
                with capturing(capturers) as maps:
                    model(x)
                    for capture in maps.values():
                        capture.weights.float().cpu()

    run(batches[:2])  # warm-up: the kernels for this batch shape are chosen once
    return rate(len(photos), timed(lambda: run(batches)))


def io_only(photos: list[Path], out: Path) -> float:
    """(b): decode, render from a fixed 7x7 map, encode PNG, write; no model."""
    yy, xx = np.mgrid[0:7, 0:7]
    fixed = np.exp(-((yy - 3) ** 2 + (xx - 3) ** 2) / 8.0).astype(np.float32)
    layer = LayerMaps("fixed", fixed, fixed)

    def run() -> None:
        for i, photo in enumerate(photos):
            figure = render_triptych(decode_image(photo).rgb, [layer])
            write_image(out / f"{i:05d}.png", figure, "png")

    return rate(len(photos), timed(run))


def plain_loop(model: attnviz.models.LoadedModel, photos: list[Path], out: Path) -> float:
    """(d): one photo at a time, as a user would write it with attnviz's notebook API."""
    size = model.size

    def run() -> None:
        for i, photo in enumerate(photos):
            rgb = np.asarray(Image.open(photo).convert("RGB"))
            x = model.preprocess([cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)])
            with torch.inference_mode(), attnviz.capture(model) as maps:
                model(x)
            weights = next(iter(maps.values())).weights[0, 0].float().numpy()
            heat = cv2.resize(weights, (rgb.shape[1], rgb.shape[0]))
            heat = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)
            overlay = cv2.addWeighted(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 0.5, heat, 0.5, 0)
            cv2.imwrite(str(out / f"{i:05d}.png"), np.hstack([overlay, heat]))

    return rate(len(photos), timed(run))


def last_features(model: attnviz.models.LoadedModel) -> str:
    """The layer the Grad-CAM peers look at: the one attnviz's own Grad-CAM uses."""
    if model.spec.gradcam_layer:
        return model.spec.gradcam_layer
    with trunk_mode(model.net):
        return last_feature_layer(model.net, torch.zeros(1, 3, model.size, model.size))


def _normalised(model: attnviz.models.LoadedModel, photo: Path) -> tuple[np.ndarray, torch.Tensor]:
    """A peer's input: the photo as float RGB in [0, 1] at the model's size, and its tensor."""
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    rgb = np.float32(cv2.resize(rgb, (model.size, model.size))) / 255
    mean, std = np.array(model.spec.mean), np.array(model.spec.std)
    return rgb, torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)[None]).float()


def gradcam_loop(model: attnviz.models.LoadedModel, photos: list[Path], out: Path) -> float:
    """(e): pytorch-grad-cam's README loop on the network's last feature map."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image

    net = model.net
    target = dict(net.named_modules())[last_features(model)]

    def run() -> None:
        with GradCAM(model=net, target_layers=[target]) as cam:  # its hooks go at the end
            for i, photo in enumerate(photos):
                rgb, x = _normalised(model, photo)
                grayscale = cam(input_tensor=x, targets=None)[0]  # None: the predicted class
                visual = show_cam_on_image(rgb, grayscale, use_rgb=True)
                cv2.imwrite(str(out / f"{i:05d}.png"), cv2.cvtColor(visual, cv2.COLOR_RGB2BGR))

    return rate(len(photos), timed(run))


def torchcam_loop(model: attnviz.models.LoadedModel, photos: list[Path], out: Path) -> float:
    """(f): torchcam's README loop: its GradCAM extractor, then overlay_mask on the photo."""
    from torchcam.methods import GradCAM
    from torchcam.utils import overlay_mask
    from torchvision.transforms.functional import to_pil_image

    net = model.net
    extractor = GradCAM(net, target_layer=last_features(model))

    def run() -> None:
        for i, photo in enumerate(photos):
            rgb, x = _normalised(model, photo)
            scores = net(x)
            maps = extractor(scores.squeeze(0).argmax().item(), scores)
            mask = to_pil_image(maps[0].squeeze(0), mode="F")
            result = overlay_mask(Image.fromarray(np.uint8(255 * rgb)), mask, alpha=0.5)
            result.save(out / f"{i:05d}.png")

    try:
        return rate(len(photos), timed(run))
    finally:
        extractor.remove_hooks()


def wall(command: list[str], env: dict[str, str], expect: int = 0) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != expect:
        raise RuntimeError(f"{command} exited {done.returncode}: {done.stderr[-500:]!r}")
    return elapsed


def median_wall(command: list[str], env: dict[str, str], runs: int = 5, expect: int = 0) -> float:
    """Start-up times are short and noisy: the median of a few runs."""
    return float(np.median([wall(command, env, expect) for _ in range(runs)]))


def peak_rss_mib(command: list[str], env: dict[str, str]) -> float:
    """Peak RSS of a command, measured in a fresh wrapper process (its only child)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True, env=env
    )
    return int(done.stdout.split()[-1]) / 1024  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_SAMPLE)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--model", default=attnviz.DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rss-counts", default="200,2000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # the in-process contenders: (a), (b), (d), (e), (f)
    # `attnviz run` gets the environment a user's shell has: it picks its own threads.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # Users' Pythons cache bytecode; so does this process tree (attnviz's own modules too).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    results: dict[str, object] = {
        "count": args.count, "threads": args.threads, "device": "cpu", "model": args.model,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="attnviz-bench-") as tmp:
        work = Path(tmp)
        photos = photos_for(args.images, args.count, work)
        results["photos"] = str(photos[0].parent)
        model = attnviz.load_model(args.model, device="cpu")
        for out in ("io", "run", "plain", "gradcam", "torchcam"):
            (work / out).mkdir()

        for batch in (1, 8):
            results[f"a_forward_batch{batch}"] = forward_only(model, photos, batch)
        results["a_forward"] = max(results["a_forward_batch1"], results["a_forward_batch8"])
        results["b_io"] = io_only(photos, work / "io")
        folder = folder_of(photos, work / "inputs")
        common = ["--device", "cpu", "--model", args.model]
        one = [*ATTNVIZ, "run", str(photos[0]), "--out", str(work / "one"), *common]
        wall([*one, "--overwrite"], env)  # warm-up: bytecode and file caches, as for a user
        results["startup_help_s"] = median_wall([*ATTNVIZ, "--help"], env)
        results["startup_one_s"] = median_wall([*one, "--overwrite"], env, runs=5)
        # A usage error (a mistyped input) must answer before torch loads: exit code 2.
        typo = [*ATTNVIZ, "run", str(work / "no-such.jpg"), "--out", str(work / "typo")]
        results["usage_error_s"] = median_wall(typo, env, expect=2)
        run_s = wall([*ATTNVIZ, "run", str(folder), "--out", str(work / "run"), *common], env)
        results["c_run"] = rate(len(photos), run_s)
        # Start-up is timed with one photo processed: that photo leaves with it.
        results["c_run_without_startup"] = rate(len(photos) - 1, run_s - results["startup_one_s"])
        results["d_plain_loop"] = plain_loop(model, photos, work / "plain")
        for key, loop, out in (
            ("e_gradcam_loop", gradcam_loop, "gradcam"),
            ("f_torchcam_loop", torchcam_loop, "torchcam"),
        ):
            try:
                results[key] = loop(model, photos, work / out)
            except ImportError:
                results[key] = None  # run with --group bench to include it

        # The ratios exclude process start (reported on its own above).
        c = results["c_run_without_startup"]
        results["c_over_a"] = c / results["a_forward"]
        results["c_over_d"] = c / results["d_plain_loop"]
        for peer in ("e_gradcam_loop", "f_torchcam_loop"):
            rate_ = results[peer]
            results[f"c_over_{peer[0]}"] = c / rate_ if rate_ else None

        counts = [int(n) for n in args.rss_counts.split(",")]
        for count in counts:
            many = [photos[i % len(photos)] for i in range(count)]
            big = folder_of(many, work / f"rss{count}")
            command = [*ATTNVIZ, "run", str(big), "--out", str(work / f"rss{count}-out"), *common]
            results[f"peak_rss_mib_{count}"] = peak_rss_mib(command, env)
        if len(counts) > 1:
            first, last = (results[f"peak_rss_mib_{n}"] for n in (counts[0], counts[-1]))
            results["rss_growth"] = last / first - 1  # goal: within 0.10

    for key, value in results.items():
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"{key:28s} {shown}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
