"""Training ``lite0-attnpool``'s attention-gated pooling by distilling the frozen trunk.

The trunk is untouched by the gate (it only re-weights the classifier's average), so its
three inputs, block 4's and block 10's outputs and the head's features, are computed once
per photo and cached (fp16); each step runs only the gate and the classifier. The loss uses
no labels:

- KL(trunk || gated): the gated classifier must still predict what the trunk predicts;
- ``area`` x the map's mean: the gate keeps as few positions as the prediction allows;
- ``evidence`` x (1 - correlation of the gate's coarse scores with the trunk's class
  evidence), as for the gate families (``training.gates.evidence_mismatch``): KL and area alone pick
  a sufficient sliver of the object; this term asks the scores to follow all of the
  evidence for the class. It binds the scores before the spread and the sigmoid, so it
  shapes where the map opens, while the area and KL terms decide how sharply.

Training runs the model as it is used. The map is always made at 224 px
(``models.attention_pool.GATE_VIEW``), whatever the input size, and the classifier pools
the input's own head features with it; so the features are cached at several input sizes,
and each step makes the map from a batch's 224-px features, then pools the head features
and matches the trunk's logits at one of the sizes, drawn at random. (The 224-px cache
stands in for the view: below 224 px the model's view is the small input enlarged, so in
use it holds less detail than the cached photo.) Half the batches, drawn at random, are
flipped left-right by flipping their cached features (close to, not exactly, the features
of the flipped photos: the trunk's padding is not symmetric). An interrupted run resumes
where it stopped when given the same settings (``training.gates.TrainingState``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from attnviz.errors import AttnvizError
from attnviz.io import load_rgb
from attnviz.models import LoadedModel
from attnviz.models.attention_pool import GATE_VIEW, Lite0AttentionPool
from attnviz.models.registry import build_lite0_attnpool, get_spec
from attnviz.training.gates import (
    OnCache,
    OnStep,
    TrainingState,
    TrainReport,
    cached_tensors,
    counter,
    default_out,
    distillation_kl,
    evidence_mismatch,
    frozen,
    resume_path,
    run_key,
    split_holdout,
    write_weights,
)


@dataclass
class PoolTrainConfig:
    """How to train lite0-attnpool's pooling gate (``attnviz train --family attnpool``): data,
    steps, learning rate, the area and evidence terms' weights, the input sizes, the hold-out
    split and where the weights go."""

    data: Sequence[Path]
    out: Path = field(default_factory=lambda: default_out("attnpool"))
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    area: float = 0.6  # weight of the map's mean opening
    evidence: float = 1.0  # weight of (1 - correlation with the trunk's class evidence)
    # Input sizes trained at. The first, GATE_VIEW, is where the map is made and measured.
    sizes: tuple[int, ...] = (224, 160, 320)
    holdout: int = 500  # training photos kept aside to measure agreement
    holdout_per_folder: int = 0  # and at least this many from each data folder
    seed: int = 0
    cache: Path | None = None  # reuse the trunk's features across runs


@dataclass
class PoolCache:
    """Per photo: the gate's three inputs (fp16) and the trunk's logits."""

    fine: Tensor
    local: Tensor
    head: Tensor
    logits: Tensor

    def batch(self, index: Tensor, flip: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(fine, local, head, teacher logits) of the photos at ``index``."""
        fine, local, head = (_rows(t, index, flip) for t in (self.fine, self.local, self.head))
        return fine, local, head, self.logits[index]

    def pooled(self, index: Tensor, flip: bool = False) -> tuple[Tensor, Tensor]:
        """(head, teacher logits) of the photos at ``index``: what the map is pooled with."""
        return _rows(self.head, index, flip), self.logits[index]

    def __len__(self) -> int:
        return len(self.logits)


def _rows(features: Tensor, index: Tensor, flip: bool) -> Tensor:
    """The cached fp16 features of the photos at ``index`` in float32, flipped left-right."""
    rows = features[index].float()
    return rows.flip(-1) if flip else rows


@torch.inference_mode()
def cache_trunk(
    model: Lite0AttentionPool, files: Sequence[Path], size: int, tick: Callable[[int], None]
) -> PoolCache:
    """The gate's three inputs (fp16) and the bare trunk's logits for ``files`` at input ``size``,
    preprocessed as ``attnviz run`` does (decoded at full size); ``tick(n)`` after each batch."""
    # Preprocess exactly as `attnviz run` does, so the gate sees what users see.
    loaded = LoadedModel(model, get_spec("lite0-attnpool"), torch.device("cpu"), size)
    inputs: list[list[Tensor]] = [[], [], []]
    logits = []
    for start in range(0, len(files), 50):
        batch = files[start : start + 50]
        x = loaded.preprocess([load_rgb(p) for p in batch])
        features = model.features(x)
        with model.gates_disabled():
            logits.append(model.classify(*features))
        for kept, feature in zip(inputs, features, strict=True):
            kept.append(feature.half().contiguous())
        tick(len(batch))
    fine, local, head = (torch.cat(kept) for kept in inputs)
    return PoolCache(fine, local, head, torch.cat(logits))


def train_attention_pool(
    cfg: PoolTrainConfig,
    on_cache: OnCache = lambda _done, _total: None,
    on_step: OnStep = lambda _step, _total, _stats: None,
) -> TrainReport:
    """Trains the pooling gate and ``pool_gain`` on the frozen trunk's cached features, resuming
    an interrupted run of the same settings, and writes them to ``cfg.out``; returns the run's
    report."""
    torch.manual_seed(cfg.seed)
    if not cfg.sizes or cfg.sizes[0] != GATE_VIEW:
        raise AttnvizError(f"the first size to train at must be {GATE_VIEW}: the map is made there")
    holdout, train = split_holdout(cfg.data, cfg.holdout, cfg.seed, cfg.holdout_per_folder)
    files = holdout + train

    model = build_lite0_attnpool(with_gate=False)
    assert isinstance(model, Lite0AttentionPool)
    frozen(model)
    gate = model.gate
    params = [*gate.parameters(), model.pool_gain]
    for p in params:
        p.requires_grad_(True)

    tick = counter(len(train) * len(cfg.sizes) + len(holdout), on_cache)

    def compute() -> dict[str, tuple[Tensor, ...]]:
        parts = {f"train{size}": cache_trunk(model, train, size, tick) for size in cfg.sizes}
        parts["holdout"] = cache_trunk(model, holdout, cfg.sizes[0], tick)
        return {name: (p.fine, p.local, p.head, p.logits) for name, p in parts.items()}

    key = {"holdout": [str(p) for p in holdout], "train": [str(p) for p in train],
           "sizes": list(cfg.sizes), "v": 3}  # fmt: skip
    cached = cached_tensors(cfg.cache, key, compute)
    train_sets = [PoolCache(*cached[f"train{size}"]) for size in cfg.sizes]
    view_set = train_sets[0]  # what the map is made from
    hold_set = PoolCache(*cached["holdout"])

    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    # BatchNorm's running statistics are state too: a resumed run must get them back.
    progress = TrainingState(params + list(gate.buffers()), optimizer, schedule, generator)
    resume_file = resume_path(cfg.out)
    this_run = run_key(cfg, {**key, "map made at": GATE_VIEW}, files)
    first_step = progress.restore(resume_file, this_run)
    gate.train()  # batch statistics in the gate's own BatchNorm
    kl = torch.tensor(0.0)
    for step in range(first_step, cfg.steps):
        train_set = train_sets[int(torch.randint(len(train_sets), (), generator=generator))]
        index = torch.randint(len(train_set), (cfg.batch_size,), generator=generator)
        flip = bool(torch.rand((), generator=generator) < 0.5)
        fine, local, seen_head, seen_teacher = view_set.batch(index, flip)
        head, teacher = train_set.pooled(index, flip)  # the same photos at the drawn size
        scores = gate.scores(local, seen_head)
        weights = gate.squash(gate.spread(scores, fine))
        kl = distillation_kl(model.logits(gate.pool(head, weights)), teacher)
        opening = weights.mean()
        evidence = model.trunk.class_evidence(seen_head, seen_teacher.argmax(1))
        mismatch = evidence_mismatch([scores], evidence)
        loss = kl + cfg.area * opening + cfg.evidence * mismatch
        progress.step(loss, step + 1, cfg.steps, resume_file, this_run)
        on_step(
            step + 1,
            cfg.steps,
            {"kl": kl.item(), "open": opening.item(), "mismatch": mismatch.item()},
        )
    gate.eval()

    agreement, opening_held = holdout_scores(model, hold_set)
    state = {f"attention.pool.{k}": v.detach().contiguous() for k, v in gate.state_dict().items()}
    state["pool_gain"] = model.pool_gain.detach().clone()
    write_weights(cfg.out, state, cfg, "lite0-attnpool", "attnpool")
    return TrainReport(
        resumed_from=first_step,
        config={k: str(v) for k, v in asdict(cfg).items()},
        train_images=len(train),
        holdout_images=len(holdout),
        holdout_agreement=agreement,
        holdout_map_means=[opening_held],
        final_kl=kl.item(),
    )


@torch.inference_mode()
def holdout_scores(model: Lite0AttentionPool, photos: PoolCache) -> tuple[float, float]:
    """Top-1 agreement with the trunk, and the map's mean opening, on held-out photos."""
    agree, opening = 0, 0.0
    for index in torch.arange(len(photos)).split(100):
        fine, local, head, teacher = photos.batch(index)
        weights = model.gate.attention_map(fine, local, head)
        logits = model.logits(model.gate.pool(head, weights))
        agree += int((logits.argmax(1) == teacher.argmax(1)).sum())
        opening += float(weights.mean(dim=(1, 2, 3)).sum())
    n = max(len(photos), 1)
    return agree / n, opening / n
