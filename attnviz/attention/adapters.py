"""Adapters: spatial attention in third-party classes that cannot follow attnviz's protocol.

Most adapters name a class by its import path (so nothing is imported to look for it;
subclasses are covered too). Code that users copy into their own projects, such as the
CBAM authors' ``SpatialGate``, lives under any module path (``MODELS.cbam``, ``cbam``,
``mynet.attention``): such classes are recognised by their structure instead (see
:data:`STRUCTURAL_ADAPTERS`), with checks strict enough that an unrelated class of the same
name is not mistaken for them.

An adapter gives the function that turns hooks on the module into AttentionCaptures. A
"capture" function takes one forward hook's arguments, ``(module, inputs, output)``, just
as ``capture_attention`` does for attnviz's own modules; an "attach" function,
``(module, sink) -> hook handles``, places its own hooks, for a map the module's own
forward hook cannot see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

from torch import nn

from attnviz.attention.hooks import Removable
from attnviz.attention.protocol import Sink, on_forward


@dataclass(frozen=True)
class Adapter:
    """How attnviz reads one third-party class: the family its maps belong to, the function that
    captures them (``path``, imported on first use) and how that function is hooked (``kind``)."""

    family: str
    path: str  # "module:function", imported on first use
    kind: Literal["capture", "attach"] = "capture"
    # Submodules the adapter reads itself: not listed as layers of their own.
    covers: tuple[str, ...] = ()
    # A class can hold spatial attention or not depending on how it was built.
    accepts: Callable[[nn.Module], bool] | None = None
    reads_query: bool = False  # its map is the row of the --query point (QUERY_POINTS)

    def _function(self) -> Callable[..., Any]:
        module_name, _, function = self.path.partition(":")
        return getattr(import_module(module_name), function)

    def attach(self, module: nn.Module, sink: Sink) -> Sequence[Removable]:
        fn = self._function()
        if self.kind == "attach":
            return fn(module, sink)
        return on_forward(module, lambda inputs, output: fn(module, inputs, output))(sink)


def _has_spatial_attention(module: nn.Module) -> bool:
    # timm's GlobalContext with use_attn=False pools by a plain mean: no map to show.
    return isinstance(getattr(module, "conv_attn", None), nn.Conv2d)


# class import path -> adapter
ADAPTERS: dict[str, Adapter] = {
    # torchvision's ViT: fused attention, weights recomputed from the block's input.
    "torchvision.models.vision_transformer.EncoderBlock": Adapter(
        "vit-cls-attention", "attnviz.models.vit:capture_block"
    ),
    "torchvision.models.vision_transformer.Encoder": Adapter(
        "vit-rollout", "attnviz.models.vit:capture_encoder"
    ),
    # timm's CBAM: the spatial gates alone, and the whole module (with its channel weights).
    "timm.layers.cbam.SpatialAttn": Adapter(
        "cbam-spatial", "attnviz.models.cbam_third_party:capture_timm_spatial"
    ),
    "timm.layers.cbam.LightSpatialAttn": Adapter(
        "cbam-spatial", "attnviz.models.cbam_third_party:capture_timm_spatial"
    ),
    "timm.layers.cbam.CbamModule": Adapter(
        "cbam", "attnviz.models.cbam_third_party:capture_timm_cbam", covers=("spatial",)
    ),
    "timm.layers.cbam.LightCbamModule": Adapter(
        "cbam", "attnviz.models.cbam_third_party:capture_timm_cbam", covers=("spatial",)
    ),
    "timm.layers.global_context.GlobalContext": Adapter(
        "global-context",
        "attnviz.models.global_context:capture_timm_global_context",
        accepts=_has_spatial_attention,
    ),
    "timm.layers.non_local_attn.NonLocalAttn": Adapter(
        "non-local", "attnviz.models.non_local_timm:capture_timm_non_local", reads_query=True
    ),
}


def _is_cbam_authors_spatial_gate(module: nn.Module) -> bool:
    """The CBAM authors' ``SpatialGate`` (Jongchan/attention-module, ``MODELS/cbam.py``).

    Its class may live under any module path, so its layout is checked instead: the class
    is named ``SpatialGate``; ``compress`` is a module without parameters (the channel pool);
    ``spatial.conv`` is a convolution from 2 channels (max, mean) to 1 (the map's logits).
    """
    if type(module).__name__ != "SpatialGate":
        return False
    compress = getattr(module, "compress", None)
    conv = getattr(getattr(module, "spatial", None), "conv", None)
    return (
        isinstance(compress, nn.Module)
        and next(compress.parameters(), None) is None
        and isinstance(conv, nn.Conv2d)
        and (conv.in_channels, conv.out_channels) == (2, 1)
    )


# Checked in order after the import paths, for classes that users copy into their projects.
STRUCTURAL_ADAPTERS: list[tuple[Callable[[nn.Module], bool], Adapter]] = [
    (
        _is_cbam_authors_spatial_gate,
        Adapter(
            "cbam-spatial", "attnviz.models.cbam_third_party:attach_authors_spatial_gate", "attach"
        ),
    ),
]


def adapter_for(module: nn.Module) -> Adapter | None:
    """The adapter for ``module``'s class (or a base class), else for its structure, else None;
    None too where the class's adapter does not accept this instance (``accepts``)."""
    for cls in type(module).__mro__:
        adapter = ADAPTERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if adapter is not None:
            return adapter if adapter.accepts is None or adapter.accepts(module) else None
    for matches, adapter in STRUCTURAL_ADAPTERS:
        if matches(module):
            return adapter
    return None
