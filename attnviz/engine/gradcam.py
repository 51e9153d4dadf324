"""Grad-CAM (Selvaraju et al., 2017): the gradient baseline attention maps are compared with.

The map of class c on feature map A (channels k) is ReLU(sum_k alpha_k A_k), where
alpha_k is the spatial mean of d y_c / d A_k. It is computed on the model's *trunk* (its
attention gates switched off when it has any), for the trunk's predicted class.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch
from torch import Tensor, nn

from attnviz.attention.hooks import on_output, removing
from attnviz.errors import UsageError
from attnviz.models.outputs import logits_of


def last_feature_layer(net: nn.Module, x: Tensor) -> str:
    """The name of the last module, in execution order, whose output is a spatial feature
    map (several channels: a gate's one-channel logits are not features).

    A fallback for models that do not name their Grad-CAM layer; one extra forward pass.
    """
    order: list[str] = []

    def note(name: str, _inputs: tuple, out: object) -> None:
        if (
            isinstance(out, Tensor)
            and out.ndim == 4
            and out.shape[1] > 1
            and out.shape[-1] * out.shape[-2] > 1
        ):
            order.append(name)

    with removing() as handles, torch.inference_mode():
        for name, module in net.named_modules():
            if name and not list(module.children()):
                handles.append(on_output(module, partial(note, name)))
        net(x[:1])
    if not order:
        raise ValueError("the model has no layer with a spatial (N, C, H, W) output")
    return order[-1]


def has_trunk(net: nn.Module) -> bool:
    """Whether ``net`` can switch its attention gates off (``gates_disabled()``)."""
    return callable(getattr(net, "gates_disabled", None))


def trunk_mode(net: nn.Module) -> AbstractContextManager[object]:
    """A context that runs ``net`` without its attention gates, when it can."""
    return net.gates_disabled() if has_trunk(net) else nullcontext()  # type: ignore[operator]


def trunk_grad_cam(net: nn.Module, x: Tensor, layer: str | None) -> tuple[Tensor, Tensor, str]:
    """Grad-CAM of the trunk for its predicted class: (maps, logits, the layer used).

    ``layer`` None: the trunk's last feature map, found by running it once; callers keep
    the returned name so later batches skip that search.
    """
    with trunk_mode(net):
        layer = layer or last_feature_layer(net, x)
        maps, logits = grad_cam(net, x, layer)
    return maps, logits, layer


def grad_cam(
    net: nn.Module, x: Tensor, layer: str, classes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(maps (N, h, w) >= 0 at the layer's resolution, logits (N, K)) for ``classes``.

    ``classes`` defaults to each photo's predicted class. Photos in a batch do not mix:
    the model is in eval mode, so each logit depends on its own photo only.
    """
    module = net.get_submodule(layer)  # a path walk: this runs for every batch
    captured: list[object] = []
    # Tuple and dict outputs hold the class scores somewhere; logits_of finds them.
    with removing() as handles:
        handles.append(on_output(module, lambda _inputs, out: captured.append(out)))
        with torch.enable_grad():
            logits = logits_of(net(x))
            features = captured[-1] if captured else None
            if not isinstance(features, Tensor) or features.ndim != 4:
                raise UsageError(
                    f"Grad-CAM needs a layer the trunk runs that outputs a (N, C, H, W) map; "
                    f"{layer!r} does not"
                )
            if classes is None:
                classes = logits.argmax(1)
            score = logits.gather(1, classes[:, None]).sum()
            (gradients,) = torch.autograd.grad(score, features)
    alpha = gradients.mean(dim=(2, 3), keepdim=True)
    maps = torch.relu((alpha * features).sum(dim=1))
    return maps.detach(), logits.detach()
