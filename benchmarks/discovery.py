"""What watching costs: discovery's probe pass and the per-image tap, as ratios in one run.

    uv run python benchmarks/discovery.py [--threads 2] [--repeats 30]

For each model, on the same random batch of one 224 px photo and the same threads:

  plain      the forward pass alone;
  captured   the forward inside ``capture_maps`` of the layers ``run`` reads by default
             (the default model: its declared layer, read by a forward hook; the others:
             their deepest discovered layer, read by the tap's TorchFunctionMode);
  all        the same with every attention layer captured;
  probe      discovery's one probe pass at load time (seconds, once per run; none for the
             built-in models, which declare their layers).

It prints captured / plain and all / plain: the per-image cost of capturing. On the default
model no mode is ever active (its layers are declared), so watching costs it nothing; what
remains is its capture hook, which reads the map its forward computed (keep_maps) and
reduces it. For the discovered models the ratio is the tap's cost. Speed targets live here,
never in tests.
"""

from __future__ import annotations

import argparse
import time

import torch

from attnviz import DEFAULT_MODEL
from attnviz.attention import capture_maps, discover
from attnviz.models import load_model


def best_of(repeats: int, run) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    name: str, net: torch.nn.Module, size: int, default: str, repeats: int, probe: bool = True
) -> None:
    x = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    if probe:  # as load_model does for models attnviz did not write
        discover(net, x)
    probe_s = time.perf_counter() - start

    def plain() -> None:
        with torch.inference_mode():
            net(x)

    def captured(layers: str) -> None:
        with torch.inference_mode(), capture_maps(net, layers):
            net(x)

    for _ in range(3):  # warm-up: oneDNN builds its kernels on the first calls
        plain()
        captured("all")
    t_plain = best_of(repeats, plain)
    t_one = best_of(repeats, lambda: captured(default))
    t_all = best_of(repeats, lambda: captured("all"))
    print(
        f"{name:32s} plain {t_plain * 1e3:7.1f} ms  captured/plain {t_one / t_plain:5.2f}  "
        f"all/plain {t_all / t_plain:5.2f}  probe {probe_s:5.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(DEFAULT_MODEL, device="cpu")
    # Built-ins declare their layers: no probe, no mode; only their own capture hooks.
    measure(DEFAULT_MODEL, model.net, 224, model.spec.default_layer, args.repeats, probe=False)
    try:
        import timm
    except ImportError:
        return
    for name in ("vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "botnet26t_256"):
        net = timm.create_model(name, pretrained=False).eval()
        size = net.pretrained_cfg["input_size"][1]
        measure(f"timm:{name}", net, size, "-1", args.repeats)


if __name__ == "__main__":
    main()
