"""Training attnviz's Lite0 spatial gates (any family of ``gate_families.GATE_FAMILIES``;
CBAM's by default) by self-distillation on a frozen trunk.

Every gate's map is a standardised sigmoid (``gates.StandardisedGate``), so it uses the
[0, 1] scale by construction, and applies floor + (1 - floor) M, so a floor per gate
bounds how much it changes the features. The gates start from the channel-mean map
(``seed_gates``) and learn to keep the evidence the trunk's own prediction rests on.
The loss has two parts, neither using labels:

- KL(trunk || gated): the gated network must still predict what the trunk predicts;
- evidence: each gate's map should correlate with the trunk's class evidence, the
  contribution of every position to the logit of the trunk's top-1 class (its class
  activation map). KL alone is as happy with gates that close on arbitrary context as
  with gates that close on the background; this term says which positions to keep.

One learned scalar (``pool_gain``) rescales the pooled features of the gated network, so
the head gate's floor costs no confidence. The trunk is frozen, so everything up to the
first gate is computed once per image and cached; each step runs only the gated part.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

import attnviz
from attnviz.errors import AttnvizError, UsageError
from attnviz.io import IMAGE_SUFFIXES, atomic_write_bytes, load_rgb
from attnviz.models import LoadedModel
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.gate_families import GATE_FAMILIES
from attnviz.models.gates import Lite0Gate
from attnviz.models.registry import (
    LITE0_GATE_BLOCKS,
    LITE0_GATES,
    build_lite0,
    get_spec,
    lite0_gates_file,
)
from attnviz.models.weights import TRAINED_FAMILY, TRAINED_FOR

# Gates start from the feature's standardised channel mean (slope 1/2), where the evidence
# usually is. (Before the maps were standardised, starting from flat maps instead ended in
# 0/1 cut-outs: teacher agreement 94 % against 99 %.)
SEED_SLOPE = 0.5

# How much each gate may change the features (block4, block10, block15, head): a
# twentieth after a block, where later layers must see what they were trained on (at 0.9
# CBAM's trained gates agreed with the trunk on 91.9 % of the hold-out), and 0.3 on the
# head, whose features the classifier only averages.
FLOORS = (0.95, 0.95, 0.95, 0.7)

# Where each gate's map passes 0.5: M = sigmoid(4 z + offset), so at z = 1 (one standard
# deviation above the photo's mean) for -4. The threshold was picked on the training split's
# boxes (experiments/boxes-train.csv; sigmoid(4 z - 3) scored alike there).
OFFSETS = (-4.0, -4.0, -4.0, -4.0)


# Progress callbacks every trainer takes: (photos cached, total), and (step, steps, stats).
OnCache = Callable[[int, int], None]
OnStep = Callable[[int, int, dict[str, float]], None]


def default_out(family: str) -> Path:
    """Where a family's trained gates go by default: pretrained/lite0-FAMILY.safetensors, relative
    to the working directory."""
    return Path("pretrained") / lite0_gates_file(family)


@dataclass
class TrainConfig:
    """How to train the Lite0 gates of one family (``attnviz train``): data, steps, learning rates,
    the evidence term's weight, each gate's floor and offset, the hold-out split and where the
    weights go."""

    data: Sequence[Path]
    family: str = "cbam"  # the kind of gate (gate_families.GATE_FAMILIES)
    out: Path | None = None  # None: pretrained/lite0-FAMILY.safetensors
    steps: int = 600
    batch_size: int = 32
    lr: float = 0.02
    shape_lr: float = 0.1  # learning rate of the gates' conv weights, relative to lr
    evidence: float = 1.0  # weight of (1 - corr. with the class evidence)
    size: int = 224
    holdout: int = 500  # training photos kept aside to measure agreement
    holdout_per_folder: int = 0  # and at least this many from each data folder
    floors: tuple[float, ...] = FLOORS  # one per gate: what it keeps where its map is 0
    offsets: tuple[float, ...] = OFFSETS  # one per gate: M = sigmoid(4 z + offset)
    fill_until: float = 0.5  # mean fill decays from 1 to 0 over this share of the steps
    seed: int = 0
    cache: Path | None = None  # reuse the trunk's features across runs and families

    def __post_init__(self) -> None:
        if self.family not in GATE_FAMILIES:
            known = ", ".join(GATE_FAMILIES)
            raise AttnvizError(f"unknown gate family {self.family!r}; known: {known}")
        if self.out is None:
            self.out = default_out(self.family)
        if len(self.floors) != len(LITE0_GATES) or not all(0 <= f <= 1 for f in self.floors):
            raise UsageError(f"give one floor in [0, 1] per gate ({', '.join(LITE0_GATES)})")
        if len(self.offsets) != len(LITE0_GATES) or not all(map(math.isfinite, self.offsets)):
            raise UsageError(f"give one finite offset per gate ({', '.join(LITE0_GATES)})")


@dataclass
class TrainReport:
    """What a training run did: its settings as text, how many photos it trained on and held out,
    the top-1 agreement with the trunk on those held out (a share in [0, 1]), the mean of each
    gate's map there (none for the hosted blocks) and the last step's KL."""

    config: dict
    train_images: int
    holdout_images: int
    holdout_agreement: float
    holdout_map_means: list[float] = field(default_factory=list)
    final_kl: float = 0.0
    resumed_from: int = 0  # the step an interrupted run was continued from (0: fresh)


def find_images(folders: Sequence[Path]) -> list[Path]:
    """The images under each folder (recursively, by suffix), sorted within each folder; raises
    AttnvizError for a missing folder, or when no folder holds an image."""
    files: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise AttnvizError(f"{folder}: training data folder not found")
        files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AttnvizError("no training images found in " + ", ".join(map(str, folders)))
    return files


def split_holdout(
    folders: Sequence[Path], holdout: int, seed: int, per_folder: int = 0
) -> tuple[list[Path], list[Path]]:
    """(held out, trained on): the first ``holdout`` photos of a seeded shuffle, then more
    from any data folder with fewer than ``per_folder`` among them, so a folder of many
    classes is measured on more than a few photos. Deterministic, so anyone can list it."""
    files = list(dict.fromkeys(find_images(folders)))  # nested folders name a photo twice
    random.Random(seed).shuffle(files)
    held, rest = files[:holdout], files[holdout:]
    for folder in folders:
        short = per_folder - sum(p.is_relative_to(folder) for p in held)
        extra = set([p for p in rest if p.is_relative_to(folder)][: max(short, 0)])
        held += [p for p in rest if p in extra]
        rest = [p for p in rest if p not in extra]
        if per_folder and not any(p.is_relative_to(folder) for p in rest):
            raise AttnvizError(
                f"{folder}: every photo would be held out (at least {per_folder} per folder)"
            )
    if not rest:
        raise AttnvizError(f"need more than {len(held)} training images, found {len(files)}")
    return held, rest


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode (its BatchNorm statistics stay as they are) with no gradients;
    a trainer then switches on the parameters it learns."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def gates_of(model: EfficientNetLite) -> dict[str, Lite0Gate]:
    """The gates the model has, by slot name (those of LITE0_GATES)."""
    return dict(model.attention.items())  # type: ignore[arg-type]


def seed_gates(
    model: EfficientNetLite, floors: Sequence[float] = FLOORS, offsets: Sequence[float] = OFFSETS
) -> None:
    """Each gate's floor, offset and starting map, and ``pool_gain`` at the inverse of what
    the seeded head gate does to a flat map. ``floors`` and ``offsets`` are given for every
    slot of ``LITE0_GATES``, whichever of them the model has."""
    floor_of = dict(zip(LITE0_GATES, floors, strict=True))
    offset_of = dict(zip(LITE0_GATES, offsets, strict=True))
    for name, gate in gates_of(model).items():
        gate.floor.fill_(floor_of[name])
        gate.offset.fill_(offset_of[name])
        gate.seed(SEED_SLOPE)
    if "head" in model.attention:
        torch.nn.init.constant_(model.pool_gain, 1.0 / flat_gain(gates_of(model)["head"]))


@torch.no_grad()
def flat_gain(gate: Lite0Gate, channels: int = 1280) -> float:
    """How much a seeded gate scales a flat feature map (about 0.7 for a head gate: its
    standardised map is sigmoid(-4) on a flat map, applied above its 0.7 floor).

    ``pool_gain`` starts at its inverse, so the gated head starts as the trunk's head up
    to the map's shape, whatever the family does to a flat map.
    """
    flat = torch.ones(1, channels, 7, 7)
    module = gate if isinstance(gate, torch.nn.Module) else None
    # Probed as in inference: a gate with BatchNorm (BAM) in training mode would take one
    # photo's statistics for its own, and fail on them.
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        return gate.gated(flat, gate.attention_map(flat)).mean().item()
    finally:
        if module is not None:
            module.train(was_training)


@dataclass
class TrunkCache:
    """Per photo: the first gated block's output (what its gate receives), the bare trunk's
    logits and its class evidence map (head resolution) for its top-1 class."""

    features: Tensor
    logits: Tensor
    evidence: Tensor

    def __getitem__(self, index: Tensor | slice) -> TrunkCache:
        return TrunkCache(self.features[index], self.logits[index], self.evidence[index])

    def __len__(self) -> int:
        return len(self.features)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.features, self.logits, self.evidence


@torch.inference_mode()
def cache_trunk(
    model: EfficientNetLite, files: Sequence[Path], cfg: TrunkSettings, tick: Callable[[int], None]
) -> TrunkCache:
    """The bare trunk's output of the first gated block (its gate's input), its logits and its
    class evidence for ``files``, preprocessed as ``attnviz run`` does (decoded at full size);
    ``tick(n)`` after each batch."""
    # Preprocess exactly as `attnviz run` does, so the gates see what users see.
    loaded = LoadedModel(model, get_spec("lite0-cbam"), torch.device("cpu"), cfg.size)
    first = min(LITE0_GATE_BLOCKS)
    features, logits, evidence = [], [], []
    for start in range(0, len(files), cfg.batch_size):
        batch = files[start : start + cfg.batch_size]
        x = loaded.preprocess([load_rgb(p) for p in batch])
        with model.gates_disabled():
            # The bare trunk's features: the cache must not depend on any gate (families
            # share it), and the gate after `first` is applied by gated_forward.
            f = model.run_blocks(model.stem(x), 0, first + 1)
            last = model.run_blocks(f, first + 1)
            out = model.head(last)
            head = model.head_features(last)
        features.append(f.contiguous())
        logits.append(out)
        evidence.append(model.class_evidence(head, out.argmax(1)))
        tick(len(batch))
    return TrunkCache(torch.cat(features), torch.cat(logits), torch.cat(evidence))


def gated_forward(model: EfficientNetLite, cached: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits and gate maps of the gated network, from the features cached before it."""
    first = min(LITE0_GATE_BLOCKS)
    maps: list[Tensor] = []
    gate = gates_of(model)[f"block{first}"]
    weights = gate.attention_map(cached)
    maps.append(weights)
    x = model.run_blocks(gate.gated(cached, weights), first + 1, maps=maps)
    return model.head(x, maps), maps


def distillation_kl(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) between the softmaxes of the two logits, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean"
    )


def evidence_mismatch(maps: Sequence[Tensor], evidence: Tensor) -> Tensor:
    """Sum over gates of the batch mean of 1 - Pearson correlation with the evidence map."""
    total = evidence.new_zeros(())
    for weights in maps:
        target = F.interpolate(evidence, weights.shape[-2:], mode="bilinear", align_corners=False)
        a = weights.flatten(1) - weights.flatten(1).mean(1, keepdim=True)
        b = target.flatten(1) - target.flatten(1).mean(1, keepdim=True)
        corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)
        total = total + (1.0 - corr).mean()
    return total


def set_fill(model: EfficientNetLite, value: float) -> None:
    """Sets every gate's ``fill`` (the share of the features' mean refilling what it suppresses)."""
    for gate in gates_of(model).values():
        gate.fill = value


def write_weights(out: Path, state: dict[str, Tensor], cfg: Any, model: str, family: str) -> None:
    """Trained weights as safetensors with their recipe (``cfg``, a dataclass) and the model
    and ``--family`` they were trained for (so ``--weights`` on another model says so),
    written atomically; the finished run's resume state is then removed."""
    from safetensors.torch import save

    metadata = {"recipe": repr(asdict(cfg)), TRAINED_FOR: model, TRAINED_FAMILY: family}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, save(state, metadata=metadata))
    resume_path(out).unlink(missing_ok=True)


def counter(total: int, on_cache: OnCache) -> Callable[[int], None]:
    """A ``tick(n)`` that reports the photos cached so far, out of ``total``."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        on_cache(done, total)

    return tick


def cached_tensors(
    path: Path | None, key: dict[str, Any], compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``compute()``'s tensors, or those a run with the same ``key`` saved at ``path``
    (the frozen trunk's features are the slow part of every training run)."""
    cached = torch.load(path, weights_only=True) if path and path.is_file() else {}
    if cached.get("key") == key:
        return cached
    tensors = compute()
    if path is not None:
        torch.save({"key": key, **tensors}, path)
    return tensors


def run_key(cfg: Any, data_key: dict[str, Any], files: Sequence[Path]) -> str:
    """Everything a run's result depends on: its settings (a dataclass), the photos (names,
    sizes, times) and the code. A saved state resumes only a run with the same key."""
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return repr({**asdict(cfg), "cache": None, "data": data_key, "stats": stats,
                 "attnviz": attnviz.__version__})  # fmt: skip


# Training state is saved this often; an interrupted run loses at most this many steps.
RESUME_EVERY = 25


def resume_path(out: Path) -> Path:
    """Where an unfinished run keeps its state, next to the weights it will write."""
    return out.with_name(out.name + ".resume.pt")


@dataclass
class TrainingState:
    """What an interrupted run needs to continue exactly where it was: tensors only."""

    params: Sequence[Tensor]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator

    def save(self, path: Path, run_key: str, step: int) -> None:
        state = {
            "key": run_key,
            "step": step,
            "params": [p.detach().clone() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def step(self, loss: Tensor, done: int, total: int, path: Path, run_key: str) -> None:
        """One optimiser and schedule step (``done`` steps of ``total`` after it); every
        ``RESUME_EVERY`` steps the state goes to ``path`` so an interrupted run can resume."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        if done % RESUME_EVERY == 0 and done < total:
            self.save(path, run_key, done)

    def restore(self, path: Path, run_key: str) -> int:
        """The step to start from: 0, or where a run with the same settings stopped."""
        if not path.is_file():
            return 0
        try:
            state = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged state file only means starting over
            return 0
        if not isinstance(state, dict) or state.get("key") != run_key:
            return 0  # other settings or data: this run starts afresh (and replaces it)
        try:
            with torch.no_grad():
                for param, saved in zip(self.params, state["params"], strict=True):
                    param.copy_(saved)
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.generator.set_state(state["generator"])
        except (KeyError, ValueError, RuntimeError, TypeError):
            raise AttnvizError(
                f"{path}: saved training state does not fit this run; delete it to start over"
            ) from None
        return int(state["step"])


class TrunkSettings(Protocol):
    """What caching the frozen trunk's features depends on (every training config has it)."""

    data: Sequence[Path]
    holdout: int
    holdout_per_folder: int
    seed: int
    size: int
    batch_size: int
    cache: Path | None


@dataclass
class TrunkSplit:
    """The photos held out and trained on, and the frozen trunk's cache of each."""

    holdout: list[Path]
    train: list[Path]
    held_set: TrunkCache
    train_set: TrunkCache
    key: dict[str, Any]  # what the cache depends on (part of a resumable run's key)

    @property
    def files(self) -> list[Path]:
        return self.holdout + self.train


def cached_trunk(cfg: TrunkSettings, trunk: EfficientNetLite, on_cache: OnCache) -> TrunkSplit:
    """The hold-out split of ``cfg.data`` and the bare ``trunk``'s cache of both parts,
    read from ``cfg.cache`` when a run with the same photos and size saved it there (the
    gate families and the hosted blocks share one file)."""
    holdout, train = split_holdout(cfg.data, cfg.holdout, cfg.seed, cfg.holdout_per_folder)
    files = holdout + train
    tick = counter(len(files), on_cache)

    def compute() -> dict[str, Any]:
        parts = {"train": cache_trunk(trunk, train, cfg, tick),
                 "holdout": cache_trunk(trunk, holdout, cfg, tick)}  # fmt: skip
        return {name: part.tensors() for name, part in parts.items()}

    # v3: features of the bare trunk (v2 had the seeded block-4 gate applied to them).
    key = {"files": [str(p) for p in files], "size": cfg.size, "holdout": cfg.holdout, "v": 3}
    cached = cached_tensors(cfg.cache, key, compute)
    return TrunkSplit(
        holdout, train, TrunkCache(*cached["holdout"]), TrunkCache(*cached["train"]), key
    )


def train_gates(
    cfg: TrainConfig,
    on_cache: OnCache = lambda _done, _total: None,
    on_step: OnStep = lambda _step, _total, _stats: None,
) -> TrainReport:
    """Trains the gates of ``cfg.family`` and ``pool_gain`` on the frozen trunk, resuming an
    interrupted run of the same settings, and writes them to ``cfg.out``; returns the run's
    report."""
    torch.manual_seed(cfg.seed)
    assert cfg.out is not None  # set by __post_init__

    model = build_lite0(cfg.family, with_gates=False)
    assert isinstance(model, EfficientNetLite)
    frozen(model).to(memory_format=torch.channels_last)
    seed_gates(model, cfg.floors, cfg.offsets)
    gate_params = [p for gate in model.attention.values() for p in gate.parameters()]
    gate_params.append(model.pool_gain)
    for p in gate_params:
        p.requires_grad_(True)

    split = cached_trunk(cfg, model, on_cache)
    train_set, hold_set = split.train_set, split.held_set

    # The maps' shape (conv weights) is learnt more slowly than the rest (kept from before
    # the maps were standardised, when a fast slope turned them into 0/1 cut-outs).
    weights = [p for gate in gates_of(model).values() for p in gate.shape_parameters()]
    levels = [p for p in gate_params if all(p is not w for w in weights)]
    optimizer = torch.optim.Adam(
        [{"params": weights, "lr": cfg.lr * cfg.shape_lr}, {"params": levels, "lr": cfg.lr}]
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    progress = TrainingState(gate_params, optimizer, schedule, generator)
    resume_file = resume_path(cfg.out)
    this_run = run_key(cfg, split.key, split.files)
    first_step = progress.restore(resume_file, this_run)
    kl = torch.tensor(0.0)
    for step in range(first_step, cfg.steps):
        fill_steps = max(cfg.fill_until * cfg.steps, 1)
        set_fill(model, max(0.0, 1.0 - step / fill_steps))
        batch = train_set[torch.randint(len(train_set), (cfg.batch_size,), generator=generator)]
        logits, maps = gated_forward(model, batch.features)
        kl = distillation_kl(logits, batch.logits)
        mismatch = evidence_mismatch(maps, batch.evidence)
        progress.step(kl + cfg.evidence * mismatch, step + 1, cfg.steps, resume_file, this_run)
        stats = {"kl": kl.item(), "mismatch": mismatch.item()}
        on_step(step + 1, cfg.steps, stats)

    set_fill(model, 0.0)
    agreement, map_means = holdout_scores(model, hold_set, cfg.batch_size)
    state = model.attention.state_dict()
    gates = {f"attention.{k}": v.detach().contiguous() for k, v in state.items()}
    gates["pool_gain"] = model.pool_gain.detach().clone()
    write_weights(cfg.out, gates, cfg, f"lite0-{cfg.family}", cfg.family)
    return TrainReport(
        resumed_from=first_step,
        config={k: str(v) for k, v in asdict(cfg).items()},
        train_images=len(split.train),
        holdout_images=len(split.holdout),
        holdout_agreement=agreement,
        holdout_map_means=map_means,
        final_kl=kl.item(),
    )


@torch.inference_mode()
def holdout_scores(
    model: EfficientNetLite, photos: TrunkCache, batch_size: int
) -> tuple[float, list[float]]:
    """Top-1 agreement with the trunk, and the mean of each gate's map, on held-out photos."""
    agree, means = 0, torch.zeros(len(model.attention))
    for start in range(0, len(photos), batch_size):
        batch = photos[start : start + batch_size]
        logits, maps = gated_forward(model, batch.features)
        agree += int((logits.argmax(1) == batch.logits.argmax(1)).sum())
        means += torch.stack([m.mean(dim=(1, 2, 3)).sum() for m in maps])
    n = max(len(photos), 1)
    return agree / n, (means / n).tolist()
