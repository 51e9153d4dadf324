"""BatchNorm folding: how much faster the forward pass is with the trunk's BatchNorms
folded into its convolutions (what ``load_model`` does) than without, in one run.

    uv run python benchmarks/batchnorm_folding.py [--rounds 8] [--repeats 20] [--size 224]

For each shipped model named below, the folded model (``load_model``) and the same model
unfolded (``load_model(fold_batchnorm=False)``) take turns: each round
times ``--repeats`` forward passes of one random photo through each, and the medians over
the rounds give the ratio, so the machine's drift affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import attnviz

MODELS = ("lite0-attnpool", "lite0-cbam")


def per_forward_ms(net: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        net(x)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    x = torch.randn(1, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    print(f"threads {torch.get_num_threads()}, batch 1, {args.size} px")
    for name in MODELS:
        folded = attnviz.load_model(name, device="cpu").net
        plain = attnviz.load_model(name, device="cpu", fold_batchnorm=False).net
        times: dict[str, list[float]] = {"folded": [], "unfolded": []}
        with torch.inference_mode():
            for net in (folded, plain):  # warm-up: oneDNN builds its kernels
                per_forward_ms(net, x, 5)
            for _ in range(args.rounds):
                times["folded"].append(per_forward_ms(folded, x, args.repeats))
                times["unfolded"].append(per_forward_ms(plain, x, args.repeats))
        fast, slow = (statistics.median(times[k]) for k in ("folded", "unfolded"))
        print(f"{name}: folded {fast:.1f} ms, unfolded {slow:.1f} ms, speed-up {slow / fast:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
