"""Training the attention block of ``lite0-nonlocal`` or ``lite0-deform`` by
self-distillation, with the gate families' evidence term on the block's own map.

Both blocks start as the identity (a zero-initialised BatchNorm on their residual
branch), which already predicts what the trunk predicts, so distillation alone gives them
nothing to learn; fine-tuning them on Imagenette's labels (their earlier recipe) taught
them little either, and their maps did not follow the object. What tells a block where to
attend is the trunk's class evidence (``training.gates.evidence_mismatch``): the contribution of
every position to the logit of the trunk's top-1 class. The loss, without labels:

- KL(trunk || hosted): the model with the block must still predict what the trunk does;
- evidence: 1 - the Pearson correlation with the class evidence of the map attnviz
  shows: for the non-local block every query's attention row (the map is one of them:
  ``NonLocalBlock.capture_attention``), for DCNv2 the modulated sampling density.

Only what decides where the block attends is trained (``where_it_looks``); what it adds
there stays as it started. Distilling the trunk can only pull a residual branch towards
zero, the trunk's own answer: a block trained whole from the identity kept a zero branch,
and one trained whole from the label-trained block lost 97 % of its branch's scale.
``init`` starts from a block whose residual branch does something (the shipped blocks:
the ones fine-tuned on Imagenette's labels); the trunk and the rest of the block stay
frozen, BatchNorm statistics included. Features come from the gate families' trunk
cache (same split, same file), carried on to the block's input once per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from attnviz.errors import AttnvizError, UsageError
from attnviz.models.deformable import ResidualDeformable
from attnviz.models.lite0_hosts import Lite0WithBlock
from attnviz.models.nonlocal_block import NonLocalBlock
from attnviz.models.registry import (
    LITE0_BLOCKS,
    LITE0_GATE_BLOCKS,
    build_lite0_block,
)
from attnviz.models.weights import read_state_dict
from attnviz.training.gates import (
    OnCache,
    OnStep,
    TrainingState,
    TrainReport,
    TrunkCache,
    cached_trunk,
    default_out,
    distillation_kl,
    evidence_mismatch,
    frozen,
    resume_path,
    run_key,
    write_weights,
)


@dataclass
class BlockTrainConfig:
    """How to train a hosted block (``attnviz train --family nonlocal|deform``): data, steps,
    optimiser, the evidence term's weight, the hold-out split and where the weights go."""

    data: Sequence[Path]
    family: str = "nonlocal"  # one of LITE0_BLOCKS
    out: Path | None = None  # None: pretrained/lite0-FAMILY.safetensors
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    evidence: float = 1.0  # weight of (1 - corr. with the class evidence)
    size: int = 224
    holdout: int = 500
    holdout_per_folder: int = 0
    seed: int = 0
    cache: Path | None = None  # shared with the gate families' runs
    init: Path | None = None  # start from this block's weights instead of the identity

    def __post_init__(self) -> None:
        if self.family not in LITE0_BLOCKS:
            raise AttnvizError(f"no block {self.family!r}; choose {', '.join(LITE0_BLOCKS)}")
        if self.out is None:
            self.out = default_out(self.family)
        if self.init is not None and self.init.resolve() == self.out.resolve():
            raise UsageError(
                f"{self.init}: --init and --out name the same file; give another --out"
            )


def where_it_looks(block: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that decide where a block attends, the only ones step 2 trains:
    theta and phi (the attention's logits) of the non-local block, DCNv2's offset-and-mask
    conv. What the block adds at the places it attends (g, W_z, the DCN kernels, the
    residual BatchNorm) stays as the block started."""
    if isinstance(block, NonLocalBlock):
        # (phi's bias adds the same to every key of a query: softmax cancels it, so only
        # weight decay moves it.)
        return [*block.theta.parameters(), *block.phi.parameters()]
    if isinstance(block, ResidualDeformable):
        return list(block.dcn.offset_mask.parameters())
    raise AttnvizError(f"no trainable map for {type(block).__name__}")


def block_maps(block: torch.nn.Module, x: Tensor) -> Tensor:
    """The block's maps as attnviz shows them, before scaling for display, differentiable:
    (M, 1, H, W) with M = N x (queries) for the non-local block, N for DCNv2."""
    h, w = x.shape[-2:]
    if isinstance(block, NonLocalBlock):
        attention, values = block.attention(x)  # (N, HW, H'W'): one row per query
        return attention.reshape(-1, 1, *values.shape[2:])
    if isinstance(block, ResidualDeformable):
        offset, mask = block.dcn.offsets_and_masks(x)
        return block.dcn.sampling_density(offset, mask, (h, w))
    raise AttnvizError(f"no trainable map for {type(block).__name__}")


@torch.no_grad()
def block_inputs(model: Lite0WithBlock, photos: TrunkCache) -> Tensor:
    """The trunk's features entering the block, from the cached ones before it."""
    start = min(LITE0_GATE_BLOCKS) + 1  # the cache holds the first gated block's output
    chunks = [model.trunk.run_blocks(f, start, model.after + 1) for f in photos.features.split(64)]
    return torch.cat(chunks)


def train_block(
    cfg: BlockTrainConfig,
    on_cache: OnCache = lambda _done, _total: None,
    on_step: OnStep = lambda _step, _total, _stats: None,
) -> TrainReport:
    """Trains what decides where the block attends, resuming an interrupted run of the same
    settings, and writes the block's weights to ``cfg.out``; returns the run's report."""
    torch.manual_seed(cfg.seed)
    assert cfg.out is not None  # set by __post_init__
    model = build_lite0_block(cfg.family, with_block=False)
    assert isinstance(model, Lite0WithBlock)
    frozen(model)
    block = model.block
    if cfg.init is not None:
        prefix = f"attention.block{model.after}."
        state = read_state_dict(cfg.init, given=True)
        start = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        try:
            block.load_state_dict(start)
        except RuntimeError:
            raise UsageError(f"{cfg.init}: not the weights of lite0-{cfg.family}'s block") from None

    split = cached_trunk(cfg, model.trunk, on_cache)
    train_x, held_x = block_inputs(model, split.train_set), block_inputs(model, split.held_set)

    params = where_it_looks(block)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    progress = TrainingState(params, optimizer, schedule, generator)
    resume_file = resume_path(cfg.out)
    # The init file's size and time are part of the key: a changed file starts afresh.
    this_run = run_key(cfg, split.key, [*split.files, *([cfg.init] if cfg.init else [])])
    first_step = progress.restore(resume_file, this_run)
    kl = torch.tensor(0.0)
    for step in range(first_step, cfg.steps):
        pick = torch.randint(len(train_x), (cfg.batch_size,), generator=generator)
        x, teacher = train_x[pick], split.train_set[pick]
        logits = model.forward_from(x)
        maps = block_maps(block, x)
        evidence = teacher.evidence.repeat_interleave(len(maps) // len(x), dim=0)
        kl = distillation_kl(logits, teacher.logits)
        mismatch = evidence_mismatch([maps], evidence)
        progress.step(kl + cfg.evidence * mismatch, step + 1, cfg.steps, resume_file, this_run)
        on_step(step + 1, cfg.steps, {"kl": kl.item(), "mismatch": mismatch.item()})

    agreement = holdout_agreement(model, held_x, split.held_set.logits)
    state = {f"attention.block{model.after}.{k}": v.detach().contiguous()
             for k, v in block.state_dict().items()}  # fmt: skip
    write_weights(cfg.out, state, cfg, f"lite0-{cfg.family}", cfg.family)
    return TrainReport(
        resumed_from=first_step,
        config={k: str(v) for k, v in asdict(cfg).items()},
        train_images=len(split.train),
        holdout_images=len(split.holdout),
        holdout_agreement=agreement,
        final_kl=kl.item(),
    )


@torch.inference_mode()
def holdout_agreement(model: Lite0WithBlock, inputs: Tensor, trunk_logits: Tensor) -> float:
    """Share of held-out photos on which the hosted model's top-1 is the trunk's."""
    logits = torch.cat([model.forward_from(x) for x in inputs.split(64)])
    return float((logits.argmax(1) == trunk_logits.argmax(1)).float().mean())
