"""Hooks in one place: attnviz reads a model only through attention/hooks.py, and every hook
it adds is gone when the work that needed it ends, also when that work fails."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from attnviz.attention import capture_maps
from attnviz.attention.hooks import around_calls, on_output, removing
from attnviz.engine.gradcam import grad_cam, last_feature_layer
from tests.toy_models import ToyGated, hook_count

PACKAGE = Path(__file__).resolve().parents[1] / "attnviz"
HOOKS = PACKAGE / "attention" / "hooks.py"


def test_only_hooks_py_registers_hooks_on_a_model() -> None:
    registering = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("register_")
                and ("hook" in node.attr)
            ):
                registering.add(path)
    assert registering == {HOOKS}


def test_on_output_sees_inputs_and_output_and_never_replaces_the_output() -> None:
    layer = nn.ReLU()
    seen = []
    with removing() as handles:
        handles.append(on_output(layer, lambda inputs, out: seen.append((inputs, out)) or 7))
        out = layer(torch.tensor([-1.0, 2.0]))
    assert torch.equal(out, torch.tensor([0.0, 2.0]))
    assert torch.equal(seen[0][0][0], torch.tensor([-1.0, 2.0]))
    assert seen[0][1] is out
    assert hook_count(layer) == 0


class Fails(nn.Module):
    def forward(self, _x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("inside the layer")


def test_around_calls_ends_every_call_it_started_also_when_the_call_raises() -> None:
    layer, events = Fails(), []
    with removing() as handles:
        handles += around_calls(
            layer, lambda _inputs: events.append("start"), lambda _i, _o: events.append("end")
        )
        with pytest.raises(RuntimeError, match="inside the layer"):
            layer(torch.zeros(1))
    assert events == ["start", "end"]
    assert hook_count(layer) == 0


def test_removing_removes_every_handle_when_the_block_fails() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(KeyError), removing() as handles:
        for module in net:
            handles.append(on_output(module, lambda _inputs, _out: None))
        assert hook_count(net) == 2
        raise KeyError("the work failed")
    assert hook_count(net) == 0


def test_capturing_probing_and_grad_cam_leave_no_hook_behind() -> None:
    net = ToyGated().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode(), capture_maps(net, "all") as maps:
        net(x)
        assert maps and hook_count(net) > 0
    layer = last_feature_layer(net, x)
    grad_cam(net, x, layer)
    with pytest.raises(Exception, match="Grad-CAM needs"):
        grad_cam(net, x, "")  # the whole model: its output is not a feature map
    assert hook_count(net) == 0
