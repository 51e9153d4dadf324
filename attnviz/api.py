"""The library API for notebooks: load a model, capture maps, render a triptych."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

import numpy as np
from torch import Tensor, nn

from attnviz.attention import AttentionCapture, capture_maps, discover
from attnviz.models import LoadedModel, load_model
from attnviz.render import LayerMaps, render_triptych

__all__ = ["capture", "capture_arrays", "discover", "layer_maps", "load_model", "triptych"]


def _arrays(weights: Tensor, weighted: Tensor) -> tuple[np.ndarray, np.ndarray]:
    return weights.float().clamp(0.0, 1.0)[:, 0].cpu().numpy(), weighted.float()[:, 0].cpu().numpy()


def capture_arrays(c: AttentionCapture) -> tuple[np.ndarray, np.ndarray]:
    """A whole batch's (weights, weighted) maps as float32 arrays of shape (N, h, w)."""
    return _arrays(c.weights, c.weighted)


def part_name(layer: str, part: str) -> str:
    """A part's row name, e.g. ``encoder.layers.encoder_layer_11[head 3]``."""
    return f"{layer}[{part}]"


def layer_maps(name: str, c: AttentionCapture, parts: bool = False) -> list[list[LayerMaps]]:
    """Per photo of the batch, the layer's row and, with ``parts``, one row per part after it."""
    weights, weighted = capture_arrays(c)
    channels = None if c.channels is None else c.channels.float().clamp(0, 1).cpu().numpy()
    markers = None if c.marker is None else c.marker.float().cpu().numpy()
    extra = {part_name(name, k): _arrays(*v) for k, v in c.parts.items()} if parts else {}
    return [
        [
            LayerMaps(
                name,
                weights[i],
                weighted[i],
                channels=None if channels is None else channels[i],
                marker=None if markers is None else (float(markers[i, 0]), float(markers[i, 1])),
                applied=c.applied,
            ),
            # A part is applied as its layer's map is: the same caption.
            *(LayerMaps(part, w[i], f[i], applied=c.applied) for part, (w, f) in extra.items()),
        ]
        for i in range(len(weights))
    ]


def capture(
    model: LoadedModel | nn.Module, layers: str | Sequence[str] | None = None
) -> AbstractContextManager[dict[str, AttentionCapture]]:
    """Capture the maps of ``layers`` (default: the model's default layer) while inside.

    >>> model = load_model("lite0-cbam", device="cpu")
    >>> with torch.inference_mode(), capture(model, "all") as maps:
    ...     logits = model(model.preprocess([image]))

    A model loaded with ``load_model`` from a file, a module or timm has had its attention
    discovered already; for a bare ``nn.Module`` run ``discover(module, example)`` once first
    to include layers that neither the protocol nor an adapter declares.
    """
    if isinstance(model, LoadedModel):
        return capture_maps(model.net, layers or model.spec.default_layer)
    return capture_maps(model, layers or "-1")


def triptych(
    image: np.ndarray,
    maps: Mapping[str, AttentionCapture],
    index: int = 0,
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    panel_height: int = 320,
    parts: bool = False,
) -> np.ndarray:
    """RGB figure (photo | weights | weighted features) for image ``index`` of the batch;
    with ``parts``, each layer's parts (heads, scales ...) as rows after it."""
    rows = [row for name, c in maps.items() for row in layer_maps(name, c, parts)[index]]
    return render_triptych(image, rows, cmap=cmap, alpha=alpha, panel_height=panel_height)
