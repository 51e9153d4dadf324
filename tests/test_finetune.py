"""Fine-tuning lite0-nonlocal's block with labels: the labels, the output, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnviz.errors import AttnvizError
from attnviz.finetune import IMAGENETTE, FinetuneConfig, finetune_block, labelled_photos
from attnviz.models.lite0_hosts import lite0_nonlocal
from attnviz.models.weights import read_state_dict
from attnviz.train import RESUME_EVERY
from tests.conftest import write_photo

WNIDS = ["n01440764", "n03888257"]  # tench (0), parachute (701)


def _photos(root: Path, per_class: int = 6) -> Path:
    for c, wnid in enumerate(WNIDS):
        for i in range(per_class):
            write_photo(root / wnid / f"{i}.png", (64, 64), seed=10 * c + i)
    return root


def test_labels_come_from_the_wnid_folders(tmp_path: Path) -> None:
    files, labels = labelled_photos(_photos(tmp_path / "data", per_class=2))
    assert [p.parent.name for p in files] == [WNIDS[0]] * 2 + [WNIDS[1]] * 2
    assert labels.tolist() == [0, 0, 9, 9]  # positions in the Imagenette order
    assert IMAGENETTE[WNIDS[1]] == 701
    write_photo(tmp_path / "data" / "n99999999" / "x.png")
    with pytest.raises(AttnvizError, match="n99999999"):
        labelled_photos(tmp_path / "data")


def test_finetune_writes_the_block_and_resumes_exactly(tmp_path: Path) -> None:
    data = _photos(tmp_path / "data")
    steps = RESUME_EVERY + 3
    common = dict(data=data, steps=steps, batch_size=4, holdout=4, lr=1e-2,
                  cache=tmp_path / "cache.pt")  # fmt: skip
    whole = finetune_block(FinetuneConfig(out=tmp_path / "whole.safetensors", **common))
    assert whole.train_images == 8 and whole.holdout_images == 4 and whole.resumed_from == 0
    assert 0 <= whole.holdout_agreement <= 100

    block = read_state_dict(tmp_path / "whole.safetensors")
    expected = {k for k in lite0_nonlocal().state_dict() if k.startswith("attention.block10.")}
    assert set(block) == expected
    # The block learnt to be more than the identity it started as.
    assert block["attention.block10.bn.weight"].abs().max() > 0

    class Stop(Exception):
        pass

    def stop_after_save(step: int, total: int, loss: float) -> None:
        if step == RESUME_EVERY + 1:
            raise Stop

    out = tmp_path / "resumed.safetensors"
    with pytest.raises(Stop):
        finetune_block(FinetuneConfig(out=out, **common), on_step=stop_after_save)
    assert not out.exists()  # nothing half-written
    resumed = finetune_block(FinetuneConfig(out=out, **common))
    assert resumed.resumed_from == RESUME_EVERY
    again = read_state_dict(out)
    assert all(torch.equal(again[k], block[k]) for k in block)
    assert not (tmp_path / "resumed.safetensors.resume.pt").exists()
