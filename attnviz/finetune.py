"""Fine-tuning the block of ``lite0-nonlocal`` or ``lite0-deform`` with Imagenette's labels.

Distilling the trunk gives these blocks nothing to learn: each starts as the identity
(a zero-initialised BatchNorm on its residual branch), which already predicts exactly
what the trunk predicts. So the block learns from labels
instead: the photos of ``imagenette-train/<wnid>/`` are classified among the 10 Imagenette
classes (cross-entropy over those 10 of the 1,000 ImageNet logits). Only the block is
trained; the trunk, its BatchNorm statistics and its classifier stay frozen, so the model
is still the ImageNet classifier, and the block must earn any change it makes.

Everything before the block is computed once per photo and cached; each step runs the
block and the rest of the trunk. An interrupted run resumes where it stopped when given
the same settings again (state saved every ``RESUME_EVERY`` steps next to the output).

Run: ``uv run python -m attnviz.finetune ../shared/data/imagenette-train --block deform``.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from attnviz.errors import AttnvizError
from attnviz.io import load_rgb
from attnviz.models import LoadedModel
from attnviz.models.lite0_hosts import Lite0WithBlock
from attnviz.models.registry import LITE0_BLOCKS, build_lite0_block, get_spec, shipped_file
from attnviz.train import (
    TrainingState,
    cached_tensors,
    counter,
    find_images,
    resume_path,
    run_key,
    write_weights,
)

# Imagenette's wnids and their ImageNet-1k class indices (../shared/data/README.md).
IMAGENETTE: dict[str, int] = {
    "n01440764": 0,  # tench
    "n02102040": 217,  # English springer
    "n02979186": 482,  # cassette player
    "n03000684": 491,  # chain saw
    "n03028079": 497,  # church
    "n03394916": 566,  # French horn
    "n03417042": 569,  # garbage truck
    "n03425413": 571,  # gas pump
    "n03445777": 574,  # golf ball
    "n03888257": 701,  # parachute
}
CLASS_INDICES = torch.tensor(list(IMAGENETTE.values()))


@dataclass
class FinetuneConfig:
    data: Path
    block: str = "nonlocal"  # one of LITE0_BLOCKS
    out: Path | None = None  # default: pretrained/lite0-{block}.safetensors
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    holdout: int = 500  # training photos kept aside: accuracy and agreement are measured there
    size: int = 224
    seed: int = 0
    cache: Path | None = None  # the trunk's features, reused by a resumed or repeated run


@dataclass
class FinetuneReport:
    train_images: int
    holdout_images: int
    # On the held-out photos, in %: among the 10 classes, and top-1 of all 1,000.
    holdout_accuracy10: float
    trunk_accuracy10: float
    holdout_top1: float
    trunk_top1: float
    holdout_agreement: float  # top-1 of the model == top-1 of the bare trunk
    final_loss: float
    resumed_from: int = 0


def labelled_photos(folder: Path) -> tuple[list[Path], Tensor]:
    """Photos under ``folder/<wnid>/`` and their label, the position of the wnid (0..9)."""
    files = find_images([folder])
    order = list(IMAGENETTE)
    labels = []
    for path in files:
        wnid = path.parent.name
        if wnid not in IMAGENETTE:
            raise AttnvizError(f"{path}: folder {wnid!r} is not one of the Imagenette wnids")
        labels.append(order.index(wnid))
    return files, torch.tensor(labels)


@torch.inference_mode()
def cache_features(
    model: Lite0WithBlock, files: Sequence[Path], size: int, tick: Callable[[int], None]
) -> tuple[Tensor, Tensor]:
    """The features entering the block and the bare trunk's logits, per photo."""
    # Decode and preprocess exactly as `attnviz run` does.
    # Both hosts preprocess alike, and the features before the block do not depend on it.
    loaded = LoadedModel(model, get_spec("lite0-nonlocal"), torch.device("cpu"), size)
    features, logits = [], []
    for start in range(0, len(files), 50):
        batch = files[start : start + 50]
        f = model.features_before(loaded.preprocess([load_rgb(p) for p in batch]))
        with model.gates_disabled():
            logits.append(model.forward_from(f))
        features.append(f.contiguous())
        tick(len(batch))
    return torch.cat(features), torch.cat(logits)


def finetune_block(
    cfg: FinetuneConfig,
    on_cache: Callable[[int, int], None] = lambda done, total: None,
    on_step: Callable[[int, int, float], None] = lambda step, total, loss: None,
) -> FinetuneReport:
    if cfg.block not in LITE0_BLOCKS:
        raise AttnvizError(f"no block {cfg.block!r} to fine-tune; choose {', '.join(LITE0_BLOCKS)}")
    out = cfg.out or Path("pretrained") / shipped_file(f"lite0-{cfg.block}")
    torch.manual_seed(cfg.seed)
    files, labels = labelled_photos(cfg.data)
    order = list(range(len(files)))
    random.Random(cfg.seed).shuffle(order)
    held, trained = order[: cfg.holdout], order[cfg.holdout :]
    if not trained:
        raise AttnvizError(f"need more than {cfg.holdout} training photos, found {len(files)}")

    model = build_lite0_block(cfg.block, with_block=False)
    assert isinstance(model, Lite0WithBlock)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    block = model.block

    def compute() -> dict[str, Tensor]:
        features, logits = cache_features(model, files, cfg.size, counter(len(files), on_cache))
        return {"features": features, "logits": logits}

    key = {"files": [str(p) for p in files], "size": cfg.size, "v": 1}
    cached = cached_tensors(cfg.cache, key, compute)
    features, trunk_logits = cached["features"], cached["logits"]
    train_index, held_index = torch.tensor(trained), torch.tensor(held)

    params = list(block.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    # BatchNorm's running statistics are state too: a resumed run must get them back.
    progress = TrainingState(params + list(block.buffers()), optimizer, schedule, generator)
    resume_file = resume_path(out)
    this_run = run_key(cfg, key, files)
    first_step = progress.restore(resume_file, this_run)
    loss = torch.tensor(0.0)
    block.train()  # batch statistics in the block's BatchNorm; the trunk's stay frozen
    for step in range(first_step, cfg.steps):
        pick = train_index[torch.randint(len(train_index), (cfg.batch_size,), generator=generator)]
        logits = model.forward_from(features[pick])
        loss = F.cross_entropy(logits[:, CLASS_INDICES], labels[pick])
        progress.step(loss, step + 1, cfg.steps, resume_file, this_run)
        on_step(step + 1, cfg.steps, loss.item())
    block.eval()

    scores = holdout_scores(model, features[held_index], trunk_logits[held_index],
                            labels[held_index])  # fmt: skip
    state = {f"attention.block{model.after}.{k}": v.detach().contiguous()
             for k, v in block.state_dict().items()}  # fmt: skip
    write_weights(out, state, cfg, f"lite0-{cfg.block}", cfg.block)
    return FinetuneReport(
        train_images=len(trained),
        holdout_images=len(held),
        final_loss=loss.item(),
        resumed_from=first_step,
        **scores,
    )


@torch.inference_mode()
def holdout_scores(
    model: Lite0WithBlock, features: Tensor, trunk_logits: Tensor, labels: Tensor
) -> dict[str, float]:
    logits = torch.cat([model.forward_from(f) for f in features.split(50)])
    imagenet = CLASS_INDICES[labels]
    n = max(len(labels), 1)

    def percent(hits: Tensor) -> float:
        return 100.0 * int(hits.sum()) / n

    return {
        "holdout_accuracy10": percent(logits[:, CLASS_INDICES].argmax(1) == labels),
        "trunk_accuracy10": percent(trunk_logits[:, CLASS_INDICES].argmax(1) == labels),
        "holdout_top1": percent(logits.argmax(1) == imagenet),
        "trunk_top1": percent(trunk_logits.argmax(1) == imagenet),
        "holdout_agreement": percent(logits.argmax(1) == trunk_logits.argmax(1)),
    }


def main(argv: Sequence[str] | None = None) -> None:
    import json

    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m attnviz.finetune", description=__doc__)
    parser.add_argument("data", type=Path, help="imagenette-train: one folder per wnid")
    defaults = FinetuneConfig(Path())
    parser.add_argument("--block", choices=LITE0_BLOCKS, default=defaults.block)
    parser.add_argument("--out", type=Path, default=None, help="default: pretrained/lite0-BLOCK")
    for name in ("steps", "batch_size", "lr", "weight_decay", "holdout", "seed"):
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--cache", type=Path, default=None, help="file to keep the features in")
    args = parser.parse_args(argv)
    cfg = FinetuneConfig(**vars(args))
    console = Console(stderr=True)

    def on_cache(done: int, total: int) -> None:
        if done % 500 < 50 or done == total:
            console.print(f"cached {done}/{total} photos")

    def on_step(step: int, total: int, loss: float) -> None:
        if step % 25 == 0 or step == total:
            console.print(f"step {step}/{total}  loss {loss:.4f}")

    try:
        report = finetune_block(cfg, on_cache, on_step)
    except AttnvizError as exc:
        console.print(f"[bold red]error[/]: {exc}")
        raise SystemExit(1) from None
    print(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
