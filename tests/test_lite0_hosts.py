"""Lite0 hosting a non-local block or a DCNv2 layer: identity at the start, the CLI path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from attnviz.attention import attention_layers
from attnviz.attention.capture import capture_maps
from attnviz.models.lite0_hosts import Lite0WithBlock, block_channels, lite0_deform, lite0_nonlocal
from tests.conftest import attnviz, write_photo


@pytest.mark.parametrize(
    ("build", "layer", "family"),
    [
        (lite0_nonlocal, "attention.block10", "non-local"),
        (lite0_deform, "attention.block10.dcn", "deformable"),
    ],
)
def test_host_starts_as_the_trunk(build, layer: str, family: str) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    host: Lite0WithBlock = build().eval()
    assert block_channels(10) == 112
    assert [(n, m.attention_family) for n, m in attention_layers(host)] == [(layer, family)]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), capture_maps(host, "all") as captured:
        logits = host(x)
        trunk_logits = host.trunk(x)
    # The inserted block's residual starts at zero: the host predicts what the trunk does.
    assert torch.allclose(logits, trunk_logits, atol=1e-5)
    capture = captured[layer]
    assert capture.weights.shape == (1, 1, 14, 14)  # stride 16 at 224 px
    assert 0 < capture.weights.max() <= 1 and capture.weights.min() >= 0
    assert all(not m._forward_hooks for m in host.modules())


def test_cli_lists_the_hosts_and_runs_a_whole_host_state_dict(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg", (96, 80))
    code, output = attnviz("layers", "--model", "lite0-nonlocal")
    assert code == 0 and "non-local" in output and "protocol" in output

    # A state dict of the whole host (trunk.* and attention.*) loads through --weights.
    torch.manual_seed(1)
    host = lite0_deform()
    with torch.no_grad():
        host.block.bn.weight.fill_(1.0)  # a block that does something
    weights = tmp_path / "deform.safetensors"
    save_file({k: v.contiguous() for k, v in host.state_dict().items()}, str(weights))
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--model", "lite0-deform", "--weights", weights,
                           "--out", out)  # fmt: skip
    assert code == 0, output
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert record["layers"] == ["attention.block10.dcn"]
    assert (out / "p.png").is_file()


@pytest.mark.parametrize(
    ("name", "layer", "part"),
    [
        ("lite0-nonlocal", "attention.block10", "mean received"),
        ("lite0-deform", "attention.block10.dcn", "mean modulation"),
    ],
)
def test_shipped_block_loads_offline_and_is_not_the_identity(
    name: str, layer: str, part: str
) -> None:
    from attnviz.models import load_model

    model = load_model(name, device="cpu")
    block = model.net.block
    assert block.bn.weight.abs().max() > 0  # fine-tuned: no longer the identity it starts as
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), capture_maps(model.net, "all") as captured:
        logits = model(x)
        with model.net.gates_disabled():
            trunk_logits = model(x)
    capture = captured[layer]  # the trunk alone never runs the block
    assert not torch.allclose(logits, trunk_logits)
    # gates_disabled() is the bare trunk (what eval's teacher agreement compares with).
    with torch.inference_mode():
        assert torch.allclose(trunk_logits, model.net.trunk(x), atol=1e-5)
    assert capture.weights.amax(dim=(2, 3)).eq(1).all() and capture.weights.std() > 0
    extra = capture.parts[part][0]
    assert extra.shape == (2, 1, 14, 14) and extra.std() > 0
    if name == "lite0-nonlocal":
        assert capture.marker is not None and capture.marker.shape == (2, 2)
