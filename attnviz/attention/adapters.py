"""Adapters: spatial attention in third-party classes that cannot follow attnviz's protocol.

An adapter names a class by its import path (so nothing is imported to look for it) and
gives the function that turns a forward hook's arguments into an AttentionCapture, just
as ``capture_attention`` does for attnviz's own modules. Subclasses are covered too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from torch import Tensor, nn

from attnviz.attention.protocol import AttentionCapture

CaptureFn = Callable[[nn.Module, tuple[Tensor, ...], object], AttentionCapture]


@dataclass(frozen=True)
class Adapter:
    family: str
    capture_path: str  # "module:function", imported on first use

    def capture(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: object
    ) -> AttentionCapture:
        module_name, _, function = self.capture_path.partition(":")
        fn: CaptureFn = getattr(import_module(module_name), function)
        return fn(module, inputs, output)


# class import path -> adapter
ADAPTERS: dict[str, Adapter] = {
    # torchvision's ViT: fused attention, weights recomputed from the block's input.
    "torchvision.models.vision_transformer.EncoderBlock": Adapter(
        "vit-cls-attention", "attnviz.models.vit:capture_block"
    ),
    "torchvision.models.vision_transformer.Encoder": Adapter(
        "vit-rollout", "attnviz.models.vit:capture_encoder"
    ),
}


def adapter_for(module: nn.Module) -> Adapter | None:
    for cls in type(module).__mro__:
        adapter = ADAPTERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if adapter is not None:
            return adapter
    return None
