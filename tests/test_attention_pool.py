"""lite0-attnpool: attention-gated pooling, its capture, its training and its shipped weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

import attnviz
from attnviz.attention import capture_maps
from attnviz.attention.hooks import on_output, removing
from attnviz.cli import app
from attnviz.errors import AttnvizError
from attnviz.io import load_rgb
from attnviz.models.attention_pool import (
    GATE_VIEW,
    AttentionGatedPooling,
    Lite0AttentionPool,
    gate_view,
)
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.registry import build_lite0_attnpool
from attnviz.training.gates import resume_path
from attnviz.training.pool import PoolCache, PoolTrainConfig, train_attention_pool
from tests.conftest import write_photo
from tests.test_train import monkeypatch_resume_every

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def randomised(gate: AttentionGatedPooling) -> AttentionGatedPooling:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in gate.parameters():
            p.normal_(0.0, 0.3)
        for bn in (gate.local[1], gate.gating[1]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return gate.eval()


def test_the_gate_computes_the_published_additive_attention_spread_by_affinity() -> None:
    gate = AttentionGatedPooling(
        local_channels=6, global_channels=10, hidden=4, floor=0.25, temperature=0.5, spread_steps=2,
        sharpness=3.0, offset=-2.0,
    )  # fmt: skip
    gate = randomised(gate)
    fine = torch.randn(2, 5, 8, 8)
    local, head = torch.randn(2, 6, 4, 4), torch.relu(torch.randn(2, 10, 2, 2))

    def bn(module: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        conv, norm = module[0], module[1]
        y = F.conv2d(x, conv.weight, conv.bias)
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return (y - norm.running_mean[:, None, None]) * scale[:, None, None] + norm.bias[
            :, None, None
        ]

    def up(x: torch.Tensor, size: int) -> torch.Tensor:
        return F.interpolate(x, (size, size), mode="bilinear", align_corners=False)

    scores = F.conv2d(F.relu(bn(gate.local, local) + up(bn(gate.gating, head), 4)),
                      gate.psi.weight, gate.psi.bias, padding=1)  # fmt: skip
    expected_maps = []
    for n in range(2):  # photo by photo: the affinity matrix of its 64 fine positions
        f = fine[n].reshape(5, 64)
        cosine = (f.T @ f) / (f.norm(dim=0)[:, None] * f.norm(dim=0)[None, :])
        affinity = torch.exp(cosine / 0.5) / torch.exp(cosine / 0.5).sum(dim=1, keepdim=True)
        spread = torch.linalg.matrix_power(affinity, 2) @ up(scores, 8)[n].reshape(64)
        # Standardised over the photo's 64 positions (population std), then squashed.
        z = (spread - spread.mean()) / (spread.std(correction=0) + 1e-3)
        expected_maps.append(torch.sigmoid(3.0 * z - 2.0).reshape(1, 8, 8))
    expected_map = torch.stack(expected_maps)
    # The classifier averages the head's 2 x 2 cells, each weighted by the mean of the
    # applied map over the 4 x 4 fine positions it covers.
    applied = 0.25 + 0.75 * expected_map
    cell_weights = applied.reshape(2, 1, 2, 4, 2, 4).mean(dim=(3, 5))
    expected_pooled = (cell_weights * head).mean(dim=(2, 3))

    with torch.no_grad():
        torch.testing.assert_close(gate.attention_map(fine, local, head), expected_map)
        torch.testing.assert_close(gate(fine, local, head), expected_pooled)
    # The recipe of the map is saved with the weights, so a file says how it was made.
    saved = gate.state_dict()
    recipe = [
        float(saved[k]) for k in ("floor", "temperature", "spread_steps", "sharpness", "offset")
    ]
    assert recipe == [0.25, 0.5, 2, 3.0, -2.0]


def test_with_the_gate_disabled_the_model_is_the_bare_trunk() -> None:
    model = build_lite0_attnpool(with_gate=False).eval()
    trunk = EfficientNetLite().eval()
    trunk.load_state_dict(
        {
            k.removeprefix("trunk."): v
            for k, v in model.state_dict().items()
            if k.startswith("trunk.")
        }
    )
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(), model.gates_disabled():
        torch.testing.assert_close(model(x), trunk(x), rtol=1e-4, atol=1e-4)


def test_the_capture_is_the_stride_8_map_the_classifier_pools_with() -> None:
    model = attnviz.load_model("lite0-attnpool", device="cpu")
    assert model.spec.default_layer is not None
    photos = [load_rgb(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    x = model.preprocess(photos)
    with torch.inference_mode(), attnviz.capture(model) as maps:
        model(x)
    assert list(maps) == ["attention.pool"]
    capture = maps["attention.pool"]
    net = model.net
    assert isinstance(net, Lite0AttentionPool)
    with torch.inference_mode():
        expected = net.gate.attention_map(*net.features(x))
    assert capture.weights.shape == (len(photos), 1, 28, 28)
    torch.testing.assert_close(capture.weights, expected)
    # A trained gate: it closes over most of every photo and opens on part of it (on these
    # four photos its peaks run from 0.13 to 0.57), and photos get their own maps.
    weights = capture.weights[:, 0]
    assert (weights.amin(dim=(1, 2)) < 0.05).all() and (weights.amax(dim=(1, 2)) > 0.1).all()
    assert weights.amax() > 0.5
    assert (weights[0] - weights[1]).abs().mean() > 0.02


def test_at_any_input_size_the_map_is_made_from_the_photo_at_224_px() -> None:
    """The gate looks at the scale it was trained at; the classifier pools the input's own
    features with that map, and at 224 px the trunk runs once."""
    torch.manual_seed(0)
    model = build_lite0_attnpool(random_init=True).eval()
    randomised(model.gate)
    x = torch.randn(2, 3, 448, 448)
    with torch.inference_mode(), capture_maps(model, "attention.pool") as maps:
        logits = model(x)
    capture = maps["attention.pool"]
    with torch.inference_mode():
        view = F.interpolate(x, (224, 224), mode="bicubic", antialias=True, align_corners=False)
        expected_map = model.gate.attention_map(*model.features(view))
        head = model.features(x)[2]
        expected_logits = model.logits(model.gate.pool(head, expected_map))
    assert capture.weights.shape == (2, 1, 28, 28)
    torch.testing.assert_close(capture.weights, expected_map)
    torch.testing.assert_close(logits, expected_logits)
    assert capture.applied == "0.7 + 0.3 M; M made at 224 px"

    stem_calls: list[torch.Size] = []
    with removing() as handles, torch.inference_mode():
        handles.append(
            on_output(model.trunk._conv_stem, lambda _i, out: stem_calls.append(out.shape))
        )
        model(torch.randn(1, 3, 224, 224))
        assert len(stem_calls) == 1  # at 224 px nothing runs twice
        model(x[:1])
    # The view runs first, so a hook that keeps a trunk layer's last call (a `--layer` on a
    # trunk module) ends on the input's.
    assert [shape[-1] for shape in stem_calls[1:]] == [112, 224]


def test_with_the_gate_off_any_size_runs_the_bare_trunk_once() -> None:
    torch.manual_seed(0)
    model = build_lite0_attnpool(random_init=True).eval()
    x = torch.randn(1, 3, 160, 160)
    stem_calls: list[torch.Size] = []
    with removing() as handles, torch.inference_mode(), model.gates_disabled():
        handles.append(
            on_output(model.trunk._conv_stem, lambda _i, out: stem_calls.append(out.shape))
        )
        logits = model(x)
    assert len(stem_calls) == 1
    with torch.inference_mode():
        torch.testing.assert_close(logits, model.trunk(x))


def test_the_caption_says_where_the_map_was_made_even_without_a_floor() -> None:
    torch.manual_seed(0)
    model = Lite0AttentionPool(floor=0.0).eval()
    with torch.inference_mode(), capture_maps(model, "attention.pool") as maps:
        model(torch.randn(1, 3, 96, 96))
    assert maps["attention.pool"].applied == "M made at 224 px"


def test_the_view_keeps_the_aspect_ratio_at_the_area_of_a_224_px_square() -> None:
    assert GATE_VIEW == 224
    assert gate_view(torch.zeros(1, 3, 224, 224)) is None
    assert gate_view(torch.zeros(1, 3, 160, 160)).shape[-2:] == (224, 224)  # type: ignore[union-attr]
    assert gate_view(torch.zeros(1, 3, 200, 800)).shape[-2:] == (112, 448)  # type: ignore[union-attr]
    half = gate_view(torch.rand(1, 3, 448, 448).half())  # no half kernel on the CPU: via float32
    assert half is not None and half.dtype == torch.float16 and half.shape[-2:] == (224, 224)


def photos_folder(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    for i in range(12):
        write_photo(photos / f"p{i}.png", size=(80, 64), seed=i)
    return photos


def test_a_short_training_run_writes_loadable_weights(tmp_path: Path) -> None:
    out = tmp_path / "pool.safetensors"
    cfg = PoolTrainConfig(data=[photos_folder(tmp_path)], out=out, steps=3, batch_size=4,
                          holdout=4, sizes=(224, 96))  # fmt: skip
    steps: list[dict[str, float]] = []
    report = train_attention_pool(cfg, on_step=lambda _step, _total, stats: steps.append(stats))

    assert len(steps) == 3
    assert all(s["kl"] >= 0 and 0 < s["open"] < 1 and 0 <= s["mismatch"] <= 2 for s in steps)
    assert report.train_images == 8 and report.holdout_images == 4
    assert 0.0 <= report.holdout_agreement <= 1.0
    shipped = load_file(str(out))
    model = build_lite0_attnpool(with_gate=False)
    model.load_state_dict(shipped, strict=False)
    assert set(shipped) == {"pool_gain"} | {f"attention.pool.{k}" for k in model.gate.state_dict()}


def test_training_makes_the_map_at_224_px_and_pools_every_size_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in use: each step's map comes from its photos' 224-px features (and the evidence
    from their 224-px head), and the same photos, flipped alike, are pooled at the drawn size."""
    calls: list[tuple[str, int, list[int], bool]] = []  # (what, head side, photos, flipped)
    batch, pooled = PoolCache.batch, PoolCache.pooled
    evidence_heads: list[int] = []
    class_evidence = EfficientNetLite.class_evidence

    def noted_batch(self, index, flip=False):  # type: ignore[no-untyped-def]
        calls.append(("map", self.head.shape[-1], index.tolist(), flip))
        return batch(self, index, flip)

    def noted_pooled(self, index, flip=False):  # type: ignore[no-untyped-def]
        calls.append(("pool", self.head.shape[-1], index.tolist(), flip))
        return pooled(self, index, flip)

    def noted_evidence(self, head, classes):  # type: ignore[no-untyped-def]
        evidence_heads.append(head.shape[-1])
        return class_evidence(self, head, classes)

    monkeypatch.setattr(PoolCache, "batch", noted_batch)
    monkeypatch.setattr(PoolCache, "pooled", noted_pooled)
    monkeypatch.setattr(EfficientNetLite, "class_evidence", noted_evidence)
    cfg = PoolTrainConfig(data=[photos_folder(tmp_path)], out=tmp_path / "pool.safetensors",
                          steps=8, batch_size=4, holdout=4, sizes=(224, 96))  # fmt: skip
    train_attention_pool(cfg)

    steps = calls[:16]  # then the hold-out's batches
    maps, pools = steps[0::2], steps[1::2]
    assert [c[0] for c in maps] == ["map"] * 8 and [c[0] for c in pools] == ["pool"] * 8
    assert {c[1] for c in maps} == {7}  # the map: always the 224-px photos (a 7 x 7 head)
    assert {c[1] for c in pools} == {7, 3}  # pooled at 224 and at 96 px
    assert [c[2:] for c in maps] == [c[2:] for c in pools]  # the same photos, flipped alike
    assert {c[3] for c in maps} == {True, False}
    assert set(evidence_heads) == {7}

    with pytest.raises(AttnvizError, match="first size to train at must be 224"):
        train_attention_pool(replace(cfg, sizes=(96, 224)))


def test_what_is_pooled_is_the_batch_s_head_and_teacher_flipped_alike() -> None:
    cache = PoolCache(*(torch.randn(3, 2, 4, 4).half() for _ in range(3)), torch.randn(3, 5))
    for flip in (False, True):
        head, teacher = cache.pooled(torch.tensor([2, 0]), flip)
        *_, expected_head, expected_teacher = cache.batch(torch.tensor([2, 0]), flip)
        assert torch.equal(head, expected_head) and torch.equal(teacher, expected_teacher)


def test_an_interrupted_run_resumes_and_ends_as_if_never_stopped(tmp_path: Path) -> None:
    photos, cache = photos_folder(tmp_path), tmp_path / "trunk.pt"

    def config(out: Path) -> PoolTrainConfig:
        return PoolTrainConfig(data=[photos], out=out, steps=6, batch_size=4, holdout=4,
                               sizes=(224, 96), cache=cache)  # fmt: skip

    straight = config(tmp_path / "straight.safetensors")
    train_attention_pool(straight)
    resumed = config(tmp_path / "resumed.safetensors")

    def stop_after_step_4(step: int, _total: int, _stats: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with monkeypatch_resume_every(2), pytest.raises(KeyboardInterrupt):
        train_attention_pool(resumed, on_step=stop_after_step_4)
    assert resume_path(resumed.out).is_file() and not resumed.out.exists()
    with monkeypatch_resume_every(2):
        report = train_attention_pool(resumed)

    assert report.resumed_from == 4 and not resume_path(resumed.out).exists()
    a, b = load_file(str(straight.out)), load_file(str(resumed.out))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_attnviz_train_family_attnpool_runs_and_refuses_the_gate_families_floors(
    tmp_path: Path,
) -> None:
    photos, out = photos_folder(tmp_path), tmp_path / "pool.safetensors"
    runner = CliRunner()
    refused = runner.invoke(
        app, ["train", str(photos), "--family", "attnpool", "--floors", "0.9,0.9,0.9,0.5"]
    )
    assert refused.exit_code == 2 and "not attnpool's" in refused.output
    result = runner.invoke(
        app,
        ["train", str(photos), "--family", "attnpool", "--out", str(out), "--steps", "2",
         "--batch-size", "4", "--holdout", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "") and out.is_file()


def test_the_capture_reads_the_map_the_forward_computed_and_it_is_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compute once: while capturing, the gate's affinities run once per forward pass, and
    the map read from the forward equals the one the capture would compute itself."""
    from attnviz.attention import capture_maps
    from attnviz.models.attention_pool import AttentionGatedPooling
    from attnviz.models.registry import build_lite0_attnpool

    torch.manual_seed(0)
    model = build_lite0_attnpool(random_init=True).eval()
    x = torch.randn(2, 3, 96, 96)
    calls = []
    original = AttentionGatedPooling.attention_map

    def counted(self, *args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(AttentionGatedPooling, "attention_map", counted)
    with torch.inference_mode(), capture_maps(model, "attention.pool") as maps:
        model(x)
    assert len(calls) == 1
    with torch.inference_mode():  # the capture on its own, outside a capture: computes it
        view = gate_view(x)
        assert view is not None  # 96 px: the map is made from the 224-px view
        alone = model.gate.capture_attention((*model.features(view), model.features(x)[2]), None)
    assert torch.equal(maps["attention.pool"].weights, alone.weights)
    assert torch.equal(maps["attention.pool"].weighted, alone.weighted)


def test_lite0_cbam_gates_are_read_from_their_forward_too(monkeypatch: pytest.MonkeyPatch):
    from attnviz.attention import capture_maps
    from attnviz.models.cbam import SpatialGate
    from attnviz.models.registry import build_lite0

    torch.manual_seed(0)
    model = build_lite0("cbam", random_init=True).eval()
    x = torch.randn(2, 3, 96, 96)
    calls = []
    original = SpatialGate.attention_map

    def counted(self, features):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(self, features)

    monkeypatch.setattr(SpatialGate, "attention_map", counted)
    inputs = []
    handle = model.attention["head"].register_forward_hook(lambda _m, i, _o: inputs.append(i))
    with torch.inference_mode(), capture_maps(model, "all") as maps:
        model(x)
    handle.remove()
    assert len(calls) == 4  # one per gate: none recomputed for the capture
    with torch.inference_mode():
        alone = model.attention["head"].capture_attention(inputs[0], None)
    assert torch.equal(maps["attention.head"].weights, alone.weights)


def test_a_kept_map_serves_only_the_input_it_was_computed_from() -> None:
    from attnviz.attention import capture_maps
    from attnviz.models.registry import build_lite0

    torch.manual_seed(0)
    model = build_lite0("cbam", random_init=True).eval()
    gate = model.attention["head"]
    seen = []
    handle = gate.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    with torch.inference_mode(), capture_maps(model, "attention.head"):
        model(torch.randn(1, 3, 96, 96))
        other = torch.randn_like(seen[0])
        inside = gate.capture_attention((other,), None)  # another input: computed afresh
    handle.remove()
    with torch.inference_mode():
        expected = gate.capture_attention((other,), None)
    assert torch.equal(inside.weights, expected.weights)
