"""Soak test: many small images through `attnviz run`, watching memory and file descriptors.

    uv run python benchmarks/soak.py [--images 10000] [--size 48] [--seed 0]
                                     [--workdir DIR] [--keep] [--interval 1.0]
                                     [--max-slope 1.0] [--json results.json]
                                     [-- EXTRA ATTNVIZ RUN FLAGS, e.g. --device cpu]

Inputs, figures and attnviz's log go to a temp dir, removed afterwards unless --keep;
a --workdir is kept (its inputs/ and out/ must be absent or empty).

What it does and measures:

1. Generates N small, varied synthetic photos (noise, gradients and shapes; sides of
   0.75-1.5 x --size; about 60% JPEG, 40% PNG of which some grayscale or RGBA; spread
   over a few nested subfolders), deterministically from --seed, with PIL (no model).
2. Runs `python -m attnviz run INPUTS --out OUT` as a child process (this interpreter, so
   the same environment) and, every --interval seconds while it runs, samples from
   /proc/<pid>: VmRSS and VmHWM (status) and the number of open file descriptors (fd/),
   plus the number of finished figures under OUT (progress).
3. After it exits: input count, output figures (*.png under OUT, the manifest excluded),
   manifest records, exit code, wall time, images/s.
4. RSS: warm-up is the LONGER of the first 20% of the samples and the first 30 s (model
   load, allocator and caches settling), but never more than half of the samples, so a
   short run still has something to fit. Samples taken once every figure is on disk
   (manifest write, interpreter exit) are left out too. On the samples in between (the
   "steady window") a least-squares line RSS(t) gives the slope in MiB/min and, through the
   mean processing rate over that window (figures finished / seconds), in MiB per 1,000
   images. Also reported: RSS at the end of warm-up, at the end, and the peak (largest
   sample and the kernel's high-water mark VmHWM).
5. fds over the steady window: median, min, max, last; "leak" = last - median.

Pass criteria (exit status 1 if any fails, 2 for a setup error):
  * outputs == inputs == manifest records, and attnviz exited 0;
  * RSS slope over the steady window < --max-slope MiB per 1,000 images (default 1.0).
    RSS swings by tens of MiB with each batch, so the slope's standard error is reported
    too, and a run too short to tell (fewer than 5 steady samples, or 2 x std. error not
    below the tolerance) fails as inconclusive. A 300-image run is a smoke test of this
    script; it cannot judge the slope;
  * fd count flat over the steady window: max - min <= 2 (one atomic write in flight
    at the moment of a sample accounts for +1).

Linux only: it reads /proc. A full 10,000-image run needs a few GB of disk for the
figures (default --panel-height 320); pass smaller panels after `--` to save disk and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from rich.console import Console
from rich.table import Table

MIB = 1024 * 1024
WARMUP_FRACTION = 0.2
WARMUP_MIN_S = 30.0
MIN_STEADY_SAMPLES = 5
MAX_FD_SPREAD = 2
SUBFOLDERS = ("", "set_a", "set_b", "set_b/nested", "set_c/deep/er")

console = Console()


# ---------------------------------------------------------------------------- inputs


def make_photo(rng: np.random.Generator, size: int) -> Image.Image:
    """One synthetic photo: gradient + noise background, a few shapes, sometimes blurred."""
    w = int(rng.integers(max(8, int(size * 0.75)), int(size * 1.5) + 1))
    h = int(rng.integers(max(8, int(size * 0.75)), int(size * 1.5) + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    tilt = rng.uniform(-2, 2, (2, 3)).astype(np.float32) * 64 / size
    pixels = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]
    pixels += rng.normal(0, rng.uniform(2, 30), (h, w, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x0, x1 = sorted(rng.integers(-w // 4, w + w // 4, 2).tolist())
        y0, y1 = sorted(rng.integers(-h // 4, h + h // 4, 2).tolist())
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
            draw.polygon(points, fill=fill)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return image


def generate_inputs(folder: Path, count: int, size: int, seed: int) -> int:
    """Write `count` photos under `folder`; returns the bytes written. Stems are unique."""
    rng = np.random.default_rng(seed)
    for sub in SUBFOLDERS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(count):
        image = make_photo(rng, size)
        sub = SUBFOLDERS[int(rng.integers(0, len(SUBFOLDERS)))]
        if rng.random() < 0.6:
            path = folder / sub / f"img_{i:05d}.jpg"
            image.save(path, quality=int(rng.integers(60, 96)))
        else:
            path = folder / sub / f"img_{i:05d}.png"
            mode = rng.random()
            if mode < 0.15:
                image = image.convert("L")
            elif mode < 0.3:
                image = image.convert("RGBA")
                image.putalpha(int(rng.integers(64, 256)))
            image.save(path)
        total += path.stat().st_size
    return total


# ---------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    t_s: float  # seconds since the child started
    rss_mib: float
    hwm_mib: float
    fds: int
    done: int  # figures on disk


def read_status_kib(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status we use (VmRSS, VmHWM)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def count_figures(out: Path) -> int:
    """Finished figures (*.png) under `out`; in-flight atomic temp files start with '.'."""
    n = 0
    for _dirpath, _dirnames, filenames in os.walk(out):
        n += sum(1 for f in filenames if f.endswith(".png") and not f.startswith("."))
    return n


def take_sample(pid: int, out: Path, t_s: float) -> Sample | None:
    """One sample, or None once the process is gone (or a zombie without memory)."""
    try:
        status = read_status_kib(pid)
        fds = count_fds(pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if "VmRSS" not in status:  # zombie: exited, not yet reaped
        return None
    return Sample(
        t_s=round(t_s, 3),
        rss_mib=status["VmRSS"] / 1024,
        hwm_mib=status.get("VmHWM", status["VmRSS"]) / 1024,
        fds=fds,
        done=count_figures(out),
    )


@dataclass
class RunResult:
    exit_code: int
    wall_s: float
    samples: list[Sample]


def run_attnviz(inputs: Path, out: Path, log: Path, interval: float, extra: list[str]) -> RunResult:
    cmd = [sys.executable, "-m", "attnviz", "run", str(inputs), "--out", str(out), *extra]
    console.print(f"[bold]running:[/] {' '.join(cmd)}", highlight=False, soft_wrap=True)
    samples: list[Sample] = []
    with open(log, "wb") as log_fh:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT)
        next_at = start
        while proc.poll() is None:
            sample = take_sample(proc.pid, out, time.monotonic() - start)
            if sample is not None:
                samples.append(sample)
            next_at += interval
            # wait() doubles as the sleep, so the exit is noticed at once.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, next_at - time.monotonic()))
        wall = time.monotonic() - start
    return RunResult(exit_code=proc.returncode, wall_s=wall, samples=samples)


# ---------------------------------------------------------------------------- analysis


def count_manifest(out: Path) -> int:
    path = out / "manifest.jsonl"
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def steady_window(samples: list[Sample], total: int) -> tuple[int, int]:
    """[start, stop) indices of the samples after warm-up and before teardown."""
    n = len(samples)
    by_fraction = int(np.ceil(WARMUP_FRACTION * n))
    by_time = sum(1 for s in samples if s.t_s < WARMUP_MIN_S)
    start = min(max(by_fraction, by_time), n // 2)
    stop = n
    while stop > start and total > 0 and samples[stop - 1].done >= total:
        stop -= 1
    if stop - start < MIN_STEADY_SAMPLES and total > 0:
        # Outputs were all there early (fast run, coarse interval): keep teardown samples.
        stop = n
    return start, stop


def fit_slope(t_s: list[float], values: list[float]) -> tuple[float, float]:
    """Least-squares slope d(value)/dt per second, and its standard error."""
    t = np.asarray(t_s, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if len(t) < 3 or float(np.ptp(t)) == 0.0:
        return float("nan"), float("nan")
    dt = t - t.mean()
    sxx = float(dt @ dt)
    slope = float(dt @ (v - v.mean())) / sxx
    residuals = v - v.mean() - slope * dt
    stderr = float(np.sqrt(float(residuals @ residuals) / (len(t) - 2) / sxx))
    return slope, stderr


@dataclass
class Criterion:
    name: str
    passed: bool
    detail: str


@dataclass
class Report:
    config: dict[str, object]
    inputs: int
    outputs: int
    manifest_records: int
    exit_code: int
    wall_s: float
    images_per_s: float
    generate_s: float
    samples_total: int
    steady_first: int
    steady_stop: int
    warmup_end_s: float | None
    rate_steady_per_s: float | None
    rss_warmup_end_mib: float | None
    rss_end_mib: float | None
    rss_peak_sampled_mib: float | None
    rss_hwm_mib: float | None
    rss_slope_mib_per_min: float | None
    rss_slope_mib_per_1k_images: float | None
    rss_slope_stderr_mib_per_1k_images: float | None
    fds_median: float | None
    fds_min: int | None
    fds_max: int | None
    fds_last: int | None
    fd_leak: float | None
    criteria: list[Criterion] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def analyse(
    config: dict[str, object],
    inputs: int,
    out: Path,
    run: RunResult,
    generate_s: float,
    max_slope: float,
) -> Report:
    outputs = count_figures(out)
    records = count_manifest(out)
    samples = run.samples
    start, stop = steady_window(samples, inputs)
    steady = samples[start:stop]
    report = Report(
        config=config,
        inputs=inputs,
        outputs=outputs,
        manifest_records=records,
        exit_code=run.exit_code,
        wall_s=run.wall_s,
        images_per_s=outputs / run.wall_s if run.wall_s > 0 else 0.0,
        generate_s=generate_s,
        samples_total=len(samples),
        steady_first=start,
        steady_stop=stop,
        warmup_end_s=steady[0].t_s if steady else None,
        rate_steady_per_s=None,
        rss_warmup_end_mib=steady[0].rss_mib if steady else None,
        rss_end_mib=samples[-1].rss_mib if samples else None,
        rss_peak_sampled_mib=max(s.rss_mib for s in samples) if samples else None,
        rss_hwm_mib=max(s.hwm_mib for s in samples) if samples else None,
        rss_slope_mib_per_min=None,
        rss_slope_mib_per_1k_images=None,
        rss_slope_stderr_mib_per_1k_images=None,
        fds_median=statistics.median(s.fds for s in steady) if steady else None,
        fds_min=min(s.fds for s in steady) if steady else None,
        fds_max=max(s.fds for s in steady) if steady else None,
        fds_last=steady[-1].fds if steady else None,
        fd_leak=None,
        samples=samples,
    )
    if len(steady) >= 3:
        per_s, se_per_s = fit_slope([s.t_s for s in steady], [s.rss_mib for s in steady])
        span = steady[-1].t_s - steady[0].t_s
        finished = steady[-1].done - steady[0].done
        # Mean rate over the steady window; the whole run's mean rate if nothing finished.
        rate = finished / span if span > 0 and finished > 0 else report.images_per_s
        report.rate_steady_per_s = rate
        report.rss_slope_mib_per_min = per_s * 60
        if rate > 0:
            report.rss_slope_mib_per_1k_images = per_s * 1000 / rate
            report.rss_slope_stderr_mib_per_1k_images = se_per_s * 1000 / rate
    if report.fds_last is not None and report.fds_median is not None:
        report.fd_leak = report.fds_last - report.fds_median

    counts_ok = outputs == inputs == records and run.exit_code == 0
    report.criteria.append(
        Criterion(
            "outputs == inputs",
            counts_ok,
            f"inputs {inputs}, figures {outputs}, manifest {records}, exit {run.exit_code}",
        )
    )
    slope = report.rss_slope_mib_per_1k_images
    se = report.rss_slope_stderr_mib_per_1k_images
    passed = False
    if len(steady) < MIN_STEADY_SAMPLES:
        detail = (
            f"inconclusive: {len(steady)} steady samples (< {MIN_STEADY_SAMPLES}); "
            "use more --images or a shorter --interval"
        )
    elif slope is None or se is None:
        detail = "inconclusive: no images were finished, so no rate to convert the slope"
    elif 2 * se >= max_slope and slope - 2 * se < max_slope:
        # Per-batch allocations make RSS swing by tens of MiB: a short run can't tell.
        detail = (
            f"inconclusive: slope {slope:+.3f} ± {se:.3f} MiB/1k images, the 2-sigma "
            f"uncertainty is not below the tolerance {max_slope:g}; run more --images"
        )
    elif slope >= max_slope:
        detail = f"slope {slope:+.3f} ± {se:.3f} MiB/1k images >= {max_slope:g}"
    else:
        passed = True
        detail = f"slope {slope:+.3f} ± {se:.3f} MiB/1k images < {max_slope:g}"
    report.criteria.append(Criterion("RSS flat after warm-up", passed, detail))
    if steady and report.fds_max is not None and report.fds_min is not None:
        spread = report.fds_max - report.fds_min
        report.criteria.append(
            Criterion(
                "fd count flat",
                spread <= MAX_FD_SPREAD,
                f"max - min = {spread} (tolerance <= {MAX_FD_SPREAD}), "
                f"leak (last - median) {report.fd_leak:+g}",
            )
        )
    else:
        report.criteria.append(Criterion("fd count flat", False, "inconclusive: no samples"))
    return report


# ---------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_report(report: Report) -> None:
    table = Table(title="attnviz soak", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("inputs", str(report.inputs)),
        ("output figures", str(report.outputs)),
        ("manifest records", str(report.manifest_records)),
        ("exit code", str(report.exit_code)),
        ("generate inputs", f"{report.generate_s:.1f} s"),
        ("attnviz wall time", f"{report.wall_s:.1f} s"),
        ("images/s (whole run)", f"{report.images_per_s:.1f}"),
        ("images/s (steady window)", _fmt(report.rate_steady_per_s, ".1f")),
        (
            "samples (steady window)",
            f"{report.samples_total} ({report.steady_first}..{report.steady_stop - 1}, "
            f"from t = {_fmt(report.warmup_end_s, '.1f', ' s')})",
        ),
        ("RSS at warm-up end", _fmt(report.rss_warmup_end_mib, ".1f", " MiB")),
        ("RSS at end", _fmt(report.rss_end_mib, ".1f", " MiB")),
        (
            "RSS peak (sampled / VmHWM)",
            f"{_fmt(report.rss_peak_sampled_mib, '.1f')} / "
            f"{_fmt(report.rss_hwm_mib, '.1f', ' MiB')}",
        ),
        (
            "RSS slope (± std. error)",
            f"{_fmt(report.rss_slope_mib_per_1k_images, '+.3f')} ± "
            f"{_fmt(report.rss_slope_stderr_mib_per_1k_images, '.3f', ' MiB / 1k images')}",
        ),
        ("RSS slope (time)", _fmt(report.rss_slope_mib_per_min, "+.3f", " MiB / min")),
        (
            "fds median / min / max / last",
            f"{_fmt(report.fds_median, 'g')} / {_fmt(report.fds_min, 'd')} / "
            f"{_fmt(report.fds_max, 'd')} / {_fmt(report.fds_last, 'd')}",
        ),
        ("fd leak (last - median)", _fmt(report.fd_leak, "+g")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for c in report.criteria:
        mark = "[green]PASS[/]" if c.passed else "[red]FAIL[/]"
        console.print(f"{mark}  {c.name}: {c.detail}", highlight=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak test: N small images through `attnviz run`, RSS and fds sampled.",
        epilog="Arguments after `--` go to `attnviz run` (e.g. -- --device cpu).",
    )
    parser.add_argument("--images", type=int, default=10_000, help="number of input photos")
    parser.add_argument("--size", type=int, default=48, help="typical side of a photo, px")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated photos")
    parser.add_argument(
        "--workdir", type=Path, help="where inputs/ and out/ go (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling period, s")
    parser.add_argument(
        "--max-slope", type=float, default=1.0, help="RSS tolerance, MiB per 1,000 images"
    )
    parser.add_argument("--json", type=Path, help="also write the results (and samples) here")
    parser.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.images < 1 or args.size < 8 or args.interval <= 0:
        parser.error("--images >= 1, --size >= 8 and --interval > 0 are required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path("/proc/self/status").is_file():
        console.print("[red]error:[/] needs Linux /proc")
        return 2
    temp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="attnviz-soak-")) if temp else args.workdir
    inputs, out = work / "inputs", work / "out"
    for path in (inputs, out):
        if path.exists() and any(path.iterdir()):
            console.print(f"[red]error:[/] {path} is not empty; choose another --workdir")
            return 2
    try:
        t0 = time.perf_counter()
        size_bytes = generate_inputs(inputs, args.images, args.size, args.seed)
        generate_s = time.perf_counter() - t0
        console.print(
            f"generated {args.images} photos ({size_bytes / MIB:.1f} MiB) "
            f"in {generate_s:.1f} s under {inputs}"
        )
        run = run_attnviz(inputs, out, work / "attnviz.log", args.interval, args.extra)
        config = {
            "images": args.images,
            "size": args.size,
            "seed": args.seed,
            "interval_s": args.interval,
            "max_slope_mib_per_1k": args.max_slope,
            "attnviz_args": args.extra,
            "warmup": f"max({WARMUP_FRACTION:.0%} of samples, {WARMUP_MIN_S:g} s), "
            "at most half the samples; teardown samples excluded",
            "workdir": str(work),
        }
        report = analyse(config, args.images, out, run, generate_s, args.max_slope)
        print_report(report)
        if run.exit_code != 0:
            tail = (work / "attnviz.log").read_text(errors="replace")[-2000:]
            console.print(f"[red]attnviz exited {run.exit_code}; log tail:[/]\n{tail}")
        if args.json:
            args.json.write_text(json.dumps(asdict(report), indent=1) + "\n")
            console.print(f"wrote {args.json}")
    finally:
        if temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif temp:
            console.print(f"kept {work}")
    return 0 if all(c.passed for c in report.criteria) else 1


if __name__ == "__main__":
    sys.exit(main())
