"""Training the lite0-cbam gates: the evidence target, the loss terms, and a short real run."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnviz.errors import AttnvizError
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.registry import LITE0_GATES, build_lite0_cbam
from attnviz.training.gates import (
    TrainConfig,
    evidence_mismatch,
    resume_path,
    seed_gates,
    split_holdout,
    train_gates,
)
from tests.conftest import write_photo


def test_class_evidence_sums_to_the_logit() -> None:
    """The evidence map is exact: its mean over positions plus the bias is the class logit."""
    torch.manual_seed(0)
    model = EfficientNetLite().eval()
    features = torch.rand(2, 1280, 7, 7)
    classes = torch.tensor([3, 500])
    with torch.no_grad(), model.gates_disabled():
        logits = model._fc(features.mean(dim=(2, 3)))
        evidence = model.class_evidence(features, classes)
    assert evidence.shape == (2, 1, 7, 7)
    expected = logits[torch.arange(2), classes] - model._fc.bias[classes]
    torch.testing.assert_close(evidence.mean(dim=(1, 2, 3)), expected)


def test_evidence_mismatch_is_zero_for_a_matching_map_and_two_for_its_opposite() -> None:
    evidence = torch.randn(4, 1, 7, 7)
    same_shape = torch.sigmoid(evidence)  # monotone but not linear: correlation just below 1
    assert evidence_mismatch([same_shape], evidence) < 0.05
    assert evidence_mismatch([torch.sigmoid(-3 * evidence)], evidence) > 1.8
    # Gates at other resolutions are compared with the evidence resized to theirs.
    fine = torch.nn.functional.interpolate(evidence, (28, 28), mode="bilinear")
    assert evidence_mismatch([fine], evidence) < 0.05


def test_seeded_head_gate_leaves_the_logits_of_a_flat_feature_map_unchanged() -> None:
    """Where the channel mean is flat, the seeded head gate scales the features by about
    0.7 + 0.3 sigmoid(-4) and the gain gives that back."""
    torch.manual_seed(0)
    model = EfficientNetLite(gate_head=True).eval()
    seed_gates(model)
    flat = torch.rand(1, 320, 1, 1).expand(1, 320, 7, 7).contiguous()
    with torch.no_grad():
        gated = model.head(flat)
        with model.gates_disabled():
            bare = model.head(flat)
    torch.testing.assert_close(gated, bare)


def test_a_short_training_run_writes_loadable_gates(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(12):
        write_photo(photos / f"p{i}.png", size=(80, 64), seed=i)
    out = tmp_path / "gates.safetensors"
    cfg = TrainConfig(data=[photos], out=out, steps=3, batch_size=4, holdout=4, size=96)
    steps: list[dict[str, float]] = []
    report = train_gates(cfg, on_step=lambda _step, _total, stats: steps.append(stats))

    assert len(steps) == 3 and all(s["kl"] >= 0 and 0 <= s["mismatch"] <= 8 for s in steps)
    assert report.train_images == 8 and report.holdout_images == 4
    assert 0.0 <= report.holdout_agreement <= 1.0
    assert len(report.holdout_map_means) == len(LITE0_GATES)
    shipped = load_file(str(out))
    assert "pool_gain" in shipped
    assert {k.split(".")[1] for k in shipped if k.startswith("attention.")} == set(LITE0_GATES)
    model = build_lite0_cbam(with_gates=False)
    model.load_state_dict(shipped, strict=False)
    torch.testing.assert_close(model.pool_gain.detach(), shipped["pool_gain"])


def test_training_needs_photos_beyond_the_holdout(tmp_path: Path) -> None:
    write_photo(tmp_path / "only.png")
    with pytest.raises(AttnvizError, match="more than"):
        train_gates(TrainConfig(data=[tmp_path], out=tmp_path / "g.safetensors", holdout=1))


def test_an_interrupted_run_resumes_and_ends_as_if_never_stopped(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(12):
        write_photo(photos / f"p{i}.png", size=(80, 64), seed=i)
    cache = tmp_path / "trunk.pt"

    def config(out: Path) -> TrainConfig:
        return TrainConfig(data=[photos], out=out, steps=6, batch_size=4, holdout=4, size=96,
                           cache=cache)  # fmt: skip

    straight = config(tmp_path / "straight.safetensors")
    train_gates(straight)

    resumed = config(tmp_path / "resumed.safetensors")

    def stop_after_step_4(step: int, _total: int, _stats: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with monkeypatch_resume_every(2), pytest.raises(KeyboardInterrupt):
        train_gates(resumed, on_step=stop_after_step_4)
    assert resume_path(resumed.out).is_file() and not resumed.out.exists()
    with monkeypatch_resume_every(2):
        report = train_gates(resumed)

    assert report.resumed_from == 4
    assert not resume_path(resumed.out).exists()
    a, b = load_file(str(straight.out)), load_file(str(resumed.out))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


@contextlib.contextmanager
def monkeypatch_resume_every(steps: int):
    import attnviz.training.gates

    saved, attnviz.training.gates.RESUME_EVERY = attnviz.training.gates.RESUME_EVERY, steps
    try:
        yield
    finally:
        attnviz.training.gates.RESUME_EVERY = saved


def test_the_hold_out_takes_the_shuffles_first_photos_then_tops_up_each_folder(
    tmp_path: Path,
) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    for folder, count in ((big, 40), (small, 8)):
        folder.mkdir()
        for i in range(count):
            (folder / f"{folder.name}{i:02d}.jpg").write_bytes(b"")
    folders = [big, small]

    plain, _ = split_holdout(folders, 4, seed=0)
    held, trained = split_holdout(folders, 4, seed=0, per_folder=3)

    assert held[:4] == plain  # topping up never changes the photos held out without it
    assert sum(p.parent == small for p in plain) < 3  # so the small folder needed topping up
    assert sum(p.parent == small for p in held) == 3
    assert not set(held) & set(trained) and len(held) + len(trained) == 48
    assert split_holdout(folders, 4, seed=0, per_folder=3) == (held, trained)  # deterministic
    # A folder given inside another is not counted twice, so no photo is on both sides.
    nested_held, nested_trained = split_holdout([tmp_path, small], 4, seed=0, per_folder=3)
    assert not set(nested_held) & set(nested_trained)
    assert len(nested_held) + len(nested_trained) == 48
    with pytest.raises(AttnvizError, match="every photo would be held out"):
        split_holdout(folders, 4, seed=0, per_folder=8)
