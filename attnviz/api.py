"""The library API for notebooks: load a model, capture maps, render a triptych."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

import numpy as np
from torch import nn

from attnviz.attention import AttentionCapture, capture_maps
from attnviz.models import LoadedModel, load_model
from attnviz.render import LayerMaps, render_triptych

__all__ = ["capture", "capture_arrays", "load_model", "triptych"]


def capture_arrays(c: AttentionCapture) -> tuple[np.ndarray, np.ndarray]:
    """A whole batch's (weights, weighted) maps as float32 arrays of shape (N, h, w)."""
    weights = c.weights.float().clamp(0.0, 1.0)[:, 0].cpu().numpy()
    return weights, c.weighted.float()[:, 0].cpu().numpy()


def capture(
    model: LoadedModel | nn.Module, layers: str | Sequence[str] | None = None
) -> AbstractContextManager[dict[str, AttentionCapture]]:
    """Capture the maps of ``layers`` (default: the model's default layer) while inside.

    >>> model = load_model("lite0-cbam", device="cpu")
    >>> with torch.inference_mode(), capture(model, "all") as maps:
    ...     logits = model(model.preprocess([image]))
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
) -> np.ndarray:
    """RGB figure (photo | weights | weighted features) for image ``index`` of the batch."""
    arrays = {name: capture_arrays(c) for name, c in maps.items()}
    rows = [LayerMaps(name, w[index], f[index]) for name, (w, f) in arrays.items()]
    return render_triptych(image, rows, cmap=cmap, alpha=alpha, panel_height=panel_height)
