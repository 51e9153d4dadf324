"""The shipped default model: loads offline from the repository, its maps mean something."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import attnviz
from attnviz.io import load_rgb
from attnviz.models.registry import LITE0_GATES_FILE, pretrained_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_gate_weights_are_shipped_as_safetensors() -> None:
    from safetensors.torch import load_file

    from attnviz.models.efficientnet_lite import EfficientNetLite

    shipped = load_file(str(pretrained_file(LITE0_GATES_FILE)))
    gates = {k for k in shipped if k.startswith("attention.")}
    assert gates == {
        f"attention.{g}.{p}"
        for g in ("block4", "block10", "block15", "head")
        for p in ("spatial.conv.weight", "spatial.conv.bias", "floor", "sharpness", "offset")
    }
    # Anything else shipped is a fine-tuned part of the trunk, under the trunk's own keys.
    assert set(shipped) - gates <= set(EfficientNetLite().state_dict())
    assert all(shipped[k].abs().sum() > 0 for k in gates if k.endswith(("weight", "bias")))
    # How much each gate may change the features: a twentieth after a block, 0.3 on the head.
    slots = ("block4", "block10", "block15", "head")
    floors = [float(shipped[f"attention.{g}.floor"]) for g in slots]
    assert floors == pytest.approx([0.95, 0.95, 0.95, 0.7])


def test_maps_are_not_constant_and_differ_across_photos() -> None:
    model = attnviz.load_model("lite0-cbam", device="cpu")
    photos = [load_rgb(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    assert len(photos) >= 3
    with torch.inference_mode(), attnviz.capture(model, "all") as maps:
        model(model.preprocess(photos))
    # Every gate standardises its logits per photo, so each map uses the scale on every
    # photo, block gates included (they change the features through their floor). The
    # head's 7 x 7 map spans least where the object fills the photo (chelsea: 0.42).
    for name, capture in maps.items():
        weights = capture.weights[:, 0]
        per_photo_range = weights.amax(dim=(1, 2)) - weights.amin(dim=(1, 2))
        least = 0.3 if name == "attention.head" else 0.9
        assert (per_photo_range > least).all(), f"{name} barely varies over a photo"
        spread = (weights[0] - weights[1]).abs().mean()
        assert spread > 0.01, f"{name} gave the same map for two photos"


def test_library_api_renders_a_triptych() -> None:
    model = attnviz.load_model(device="cpu")
    photo = load_rgb(EXAMPLES / "chelsea.jpg")
    with torch.inference_mode(), attnviz.capture(model) as maps:
        model(model.preprocess([photo]))
    figure = attnviz.triptych(photo, maps, panel_height=200)
    assert figure.dtype == np.uint8 and figure.ndim == 3 and figure.shape[2] == 3
    assert figure.shape[0] > 200 and figure.shape[1] > 3 * 200 * photo.shape[1] / photo.shape[0]


def test_the_default_map_spans_its_scale_on_every_example_at_every_size() -> None:
    """A map that is flat on panel 2's absolute scale is no picture of attention, however
    it scores after min-max: the default's opens (near 1) and shuts (near 0) on each photo."""
    photos = [load_rgb(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    for size in (160, 224, 448):
        model = attnviz.load_model(attnviz.DEFAULT_MODEL, device="cpu", size=size)
        with torch.inference_mode(), attnviz.capture(model) as maps:
            model(model.preprocess(photos))
        weights = next(iter(maps.values())).weights[:, 0]
        spans = weights.amax(dim=(1, 2)) - weights.amin(dim=(1, 2))
        assert spans.min() > 0.9, (size, spans)
        # and it is not all open: the object is a part of the photo
        assert (weights.mean(dim=(1, 2)) < 0.5).all(), (size, weights.mean(dim=(1, 2)))
