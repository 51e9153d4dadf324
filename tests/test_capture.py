"""The capture protocol: which modules are attention, how layers are picked, hooks cleaned up."""

from __future__ import annotations

import pytest
import torch

from attnviz.attention import attention_layers, capture_maps, is_spatial_attention, select_layers
from attnviz.errors import UsageError
from attnviz.models.cbam import ChannelGate, SpatialGate
from attnviz.models.outputs import logits_of
from tests.toy_models import ToyGated, hook_count


def test_modules_are_attention_through_the_protocol_not_their_names() -> None:
    assert is_spatial_attention(SpatialGate())
    assert not is_spatial_attention(ChannelGate(16))
    assert not is_spatial_attention(torch.nn.Conv2d(1, 1, 1))
    assert [name for name, _ in attention_layers(ToyGated())] == ["gate1", "gate2"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, ["gate2"]),
        ("-1", ["gate2"]),
        ("0", ["gate1"]),
        ("-2", ["gate1"]),
        ("all", ["gate1", "gate2"]),
        ("gate*", ["gate1", "gate2"]),
        ("gate2,gate1", ["gate1", "gate2"]),
        ("gate1", ["gate1"]),
    ],
)
def test_layer_selectors(selector: str | None, expected: list[str]) -> None:
    assert select_layers(ToyGated(), selector) == expected


def test_unknown_layer_lists_close_matches_and_the_valid_names() -> None:
    with pytest.raises(UsageError, match=r"did you mean gate[12].*available: gate1, gate2"):
        select_layers(ToyGated(), "gate")
    with pytest.raises(UsageError, match="out of range"):
        select_layers(ToyGated(), "-3")


def test_capture_gives_weights_in_unit_range_and_weighted_features() -> None:
    model = ToyGated().eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.inference_mode(), capture_maps(model, "all") as maps:
        model(x)
    assert set(maps) == {"gate1", "gate2"}
    assert maps["gate1"].weights.shape == (2, 1, 16, 24)
    assert maps["gate2"].weighted.shape == (2, 1, 8, 12)
    for c in maps.values():
        assert c.weights.min() >= 0.0 and c.weights.max() <= 1.0
        assert (c.weighted >= 0).all()


def test_weighted_map_is_the_channel_mean_of_weights_times_features() -> None:
    gate = SpatialGate(7).eval()
    features = torch.randn(1, 5, 6, 6)
    with torch.inference_mode(), capture_maps(torch.nn.Sequential(gate), "all") as maps:
        out = gate(features)
    expected = (gate.attention_map(features) * features).abs().mean(1, keepdim=True)
    assert torch.allclose(maps["0"].weighted, expected)
    assert torch.allclose(out, gate.attention_map(features) * features)


@pytest.mark.parametrize("output", ["tensor", "tuple", "dict"])
def test_models_returning_tuples_or_dicts_do_not_break_capture(output: str) -> None:
    model = ToyGated(output).eval()
    with torch.inference_mode(), capture_maps(model, "all") as maps:
        logits = logits_of(model(torch.randn(1, 3, 32, 32)))
    assert logits.shape == (1, 10)
    assert set(maps) == {"gate1", "gate2"}


def test_no_hooks_left_after_capture_also_after_an_exception() -> None:
    model = ToyGated().eval()
    with capture_maps(model, "all"):
        assert hook_count(model) == 2
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError), capture_maps(model, "all"):
        model(torch.randn(1, 5, 32, 32))  # wrong channel count: fails inside the block
    assert hook_count(model) == 0


def test_capture_works_under_inference_mode_without_gradients() -> None:
    model = ToyGated().eval()
    with torch.inference_mode(), capture_maps(model) as maps:
        model(torch.randn(1, 3, 32, 32))
    assert not maps["gate2"].weights.requires_grad
