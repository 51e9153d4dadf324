"""Training lite0-nonlocal's and lite0-deform's block by self-distillation with the
evidence term on the block's own map: the maps it trains are the ones attnviz shows, a
short real run writes exactly the block's keys, moves the block, and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnviz.attention import capture_maps
from attnviz.models.lite0_hosts import lite0_host
from attnviz.models.weights import read_state_dict
from attnviz.training.blocks import BlockTrainConfig, block_maps, train_block, where_it_looks
from attnviz.training.gates import RESUME_EVERY
from tests.conftest import attnviz as run_cli


def test_the_trained_maps_are_the_ones_attnviz_shows() -> None:
    """Non-local: every query's attention row (the figure shows one, scaled by its max);
    DCNv2: the modulated sampling density (the figure scales it by its max)."""
    torch.manual_seed(0)
    x = torch.randn(2, 112, 6, 5)
    for kind in ("nonlocal", "deform"):
        block = lite0_host(kind).block.eval()
        if kind == "deform":
            with torch.no_grad():  # sample off the plain grid, so the density varies
                block.dcn.offset_mask.weight.normal_(0, 0.01)
        with torch.no_grad(), capture_maps(torch.nn.Sequential(block), "all") as maps:
            block(x)
        trained = block_maps(block, x).detach()
        shown = maps["0.dcn" if kind == "deform" else "0"].weights
        if kind == "nonlocal":
            # The shown row belongs to one query of each photo: it is among the trained maps.
            rows = trained.reshape(2, 30, 1, 6, 5)
            for n in range(2):
                scaled = rows[n] / rows[n].amax(dim=(1, 2, 3), keepdim=True)
                assert (scaled - shown[n]).abs().amax(dim=(1, 2, 3)).min() < 1e-5
        else:
            torch.testing.assert_close(trained / trained.amax(dim=(2, 3), keepdim=True), shown)


@pytest.mark.parametrize("kind", ["nonlocal", "deform"])
def test_a_short_run_writes_the_block_moves_it_and_resumes_exactly(
    kind: str, training_photos: Path, tmp_path: Path
) -> None:
    steps = RESUME_EVERY + 2

    from safetensors.torch import save_file

    start = {k: v.contiguous() for k, v in lite0_host(kind).state_dict().items()
             if k.startswith("attention.block10.")}  # fmt: skip
    init = tmp_path / "start.safetensors"
    save_file(start, str(init))

    def config(name: str) -> BlockTrainConfig:
        return BlockTrainConfig(data=[training_photos], family=kind, out=tmp_path / name,
                                steps=steps, batch_size=4, holdout=4, size=96, lr=1e-2,
                                init=init, cache=tmp_path / "trunk.pt")  # fmt: skip

    logged: list[dict[str, float]] = []
    report = train_block(config("whole.safetensors"), on_step=lambda _s, _t, st: logged.append(st))
    assert report.train_images == 8 and report.holdout_images == 4
    assert 0.0 <= report.holdout_agreement <= 1.0
    assert len(logged) == steps  # KL is 0 up to rounding while the block is the identity
    assert all(s["kl"] > -1e-6 and 0 <= s["mismatch"] <= 2 for s in logged)

    whole = read_state_dict(tmp_path / "whole.safetensors")
    assert set(whole) == set(start)
    # Only where the block attends moved; what it adds there is as it started.
    host = lite0_host(kind)
    looks = {id(p) for p in where_it_looks(host.block)}
    trained = {f"attention.block10.{k}" for k, p in host.block.named_parameters() if id(p) in looks}
    moved = {k for k in whole if not torch.equal(whole[k], start[k])}
    assert moved and moved <= trained, (moved, trained)

    class Stop(Exception):
        pass

    def stop(step: int, _total: int, _stats: dict[str, float]) -> None:
        if step == RESUME_EVERY + 1:
            raise Stop

    with pytest.raises(Stop):
        train_block(config("resumed.safetensors"), on_step=stop)
    assert not (tmp_path / "resumed.safetensors").exists()  # nothing half-written
    assert train_block(config("resumed.safetensors")).resumed_from == RESUME_EVERY
    resumed = read_state_dict(tmp_path / "resumed.safetensors")
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key])


def test_attnviz_train_trains_a_block_and_refuses_the_gates_floors(
    training_photos: Path, tmp_path: Path
) -> None:
    code, output = run_cli("train", training_photos, "--family", "deform", "--floors", "1,1,1,1")
    assert code == 2 and "not deform's" in output, output
    out = tmp_path / "nl.safetensors"
    code, output = run_cli("train", training_photos, "--family", "nonlocal", "--out", out,
                           "--steps", "2", "--batch-size", "4", "--holdout", "4")  # fmt: skip
    assert code == 0, output
    assert f"wrote {out}" in output.replace("\n", "") and out.is_file()


def test_init_starts_from_a_blocks_weights_and_refuses_other_files(
    training_photos: Path, tmp_path: Path
) -> None:
    """A block whose residual branch already changes the features keeps doing so: KL
    alone gives the zero-scale branch of a fresh block no gradient."""
    fresh = lite0_host("nonlocal").state_dict()
    start = {k: v.clone() for k, v in fresh.items() if k.startswith("attention.block10.")}
    start["attention.block10.bn.weight"] = torch.full_like(
        start["attention.block10.bn.weight"], 0.1
    )
    init = tmp_path / "start.safetensors"
    from safetensors.torch import save_file

    save_file(start, str(init))
    out = tmp_path / "from-init.safetensors"
    cfg = BlockTrainConfig(data=[training_photos], out=out, steps=2, batch_size=4, holdout=4,
                           size=96, init=init, cache=tmp_path / "trunk.pt")  # fmt: skip
    train_block(cfg)
    trained = read_state_dict(out)["attention.block10.bn.weight"]
    assert trained.abs().min() > 0.05  # started at 0.1, not at the identity's 0
    code, output = run_cli("train", training_photos, "--family", "deform", "--init", init)
    assert code == 2 and "not the weights of lite0-deform's block" in output, output
    code, output = run_cli("train", training_photos, "--family", "psa", "--init", init)
    assert code == 2 and "--init" in output, output


def test_init_and_out_may_not_be_the_same_file(tmp_path: Path) -> None:
    from attnviz.errors import UsageError

    block = tmp_path / "block.safetensors"
    with pytest.raises(UsageError, match="same file"):
        BlockTrainConfig(data=[tmp_path], init=block, out=block)
