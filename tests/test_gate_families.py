"""The Lite0 gate families (cbam, psa, multiscale, lightweight, dynamic, BAM's residual
form): each module against its definition computed by hand (logits, standardised per
photo, M = sigmoid(4 z - 4), features scaled by floor + (1 - floor) M), the capture
protocol, the seeds training starts from, a short real training run that resumes, and the
shipped weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

import attnviz
from attnviz.attention import attention_layers, capture_maps, select_layers
from attnviz.errors import AttnvizError
from attnviz.io import load_rgb
from attnviz.models.bam import BAM, BAMGate
from attnviz.models.dynamic import DynamicKernelGate
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.gate_families import GATE_FAMILIES, build_gate
from attnviz.models.gates import Lite0Gate
from attnviz.models.lightweight import DepthwiseSeparableGate
from attnviz.models.multiscale import DilatedSpatialAttention
from attnviz.models.psa import PyramidSpatialAttention
from attnviz.models.registry import (
    LITE0_GATES,
    build_lite0,
    get_spec,
    lite0_gates_file,
    pretrained_file,
)
from attnviz.training.gates import (
    FLOORS,
    SEED_SLOPE,
    TrainConfig,
    resume_path,
    seed_gates,
    train_gates,
)
from tests.conftest import attnviz as run_cli
from tests.toy_models import hook_count

NEW_FAMILIES = ("psa", "multiscale", "lightweight", "dynamic", "bam")
SHIPPED_FAMILIES = ("psa", "bam", "multiscale", "lightweight", "dynamic")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def randomised(gate: nn.Module, seed: int = 0) -> nn.Module:
    """A gate with every parameter random, so no test passes on zeros or a seed's symmetry."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in gate.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return gate.eval()


class Toy(nn.Module):
    """conv -> gate -> pooled logits: a family used standalone in some other model."""

    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = gate
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.gate(self.conv(x)).mean(dim=(2, 3)))


# --- the definitions, written out position by position -------------------------------


def standardised(v: Tensor, eps: float = 1e-5) -> Tensor:
    """One map (H, W) to zero mean and unit (population) variance, as the modules do."""
    return (v - v.mean()) / (v.std(unbiased=False) + eps)


def squashed(logits: Tensor) -> Tensor:
    """A Lite0 gate's map from its logits (H, W): sigmoid(4 z - 4), z standardised."""
    return torch.sigmoid(4 * standardised(logits, eps=1e-3) - 4)


def pooled_by_hand(f: Tensor) -> Tensor:
    """[mean_c; max_c] of one photo's features (C, H, W), each standardised: (2, H, W)."""
    c = f.shape[0]
    mean = sum(f[i] for i in range(c)) / c
    mx = f[0]
    for i in range(1, c):
        mx = torch.maximum(mx, f[i])
    return torch.stack([standardised(mean), standardised(mx)])


def conv_by_hand(p: Tensor, w: Tensor, dilation: int = 1) -> Tensor:
    """Zero-padded 'same' correlation of maps (C, H, W) with one kernel (C, k, k)."""
    c, h, wd = p.shape
    k = w.shape[-1]
    out = torch.zeros(h, wd)
    for i in range(h):
        for j in range(wd):
            total = torch.zeros(())
            for ch in range(c):
                for a in range(k):
                    for b in range(k):
                        y, x = i + (a - k // 2) * dilation, j + (b - k // 2) * dilation
                        if 0 <= y < h and 0 <= x < wd:
                            total = total + w[ch, a, b] * p[ch, y, x]
            out[i, j] = total
    return out


def psa_by_hand(gate: PyramidSpatialAttention, f: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Fused map and per-scale maps of one photo whose size the divisors divide."""
    p = pooled_by_hand(f)
    h, w = p.shape[-2:]
    logits = []
    for d, conv in zip(gate.divisors, gate.scales, strict=True):
        coarse = p.reshape(2, h // d, d, w // d, d).mean(dim=(2, 4))  # d x d block means
        logit = conv_by_hand(coarse, conv.weight[0])
        logits.append(
            F.interpolate(logit[None, None], (h, w), mode="bilinear", align_corners=False)[0, 0]
        )
    fused = sum(gate.fuse.weight[0, s, 0, 0] * logits[s] for s in range(len(logits)))
    return squashed(fused), [squashed(lg) for lg in logits]


def multiscale_by_hand(gate: DilatedSpatialAttention, f: Tensor) -> tuple[Tensor, list[Tensor]]:
    p = pooled_by_hand(f)
    branches = [
        conv_by_hand(p, conv.weight[0], d)
        for d, conv in zip(gate.dilations, gate.branches, strict=True)
    ]
    return squashed(sum(branches)), [squashed(b) for b in branches]


def lightweight_by_hand(gate: DepthwiseSeparableGate, f: Tensor) -> Tensor:
    c = f.shape[0]
    depthwise = [conv_by_hand(f[i : i + 1], gate.depthwise.weight[i]) for i in range(c)]
    return squashed(sum(gate.pointwise.weight[0, i, 0, 0] * depthwise[i] for i in range(c)))


def dynamic_by_hand(gate: DynamicKernelGate, f: Tensor) -> Tensor:
    first, last = gate.router[0], gate.router[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    g = f.mean(dim=(1, 2))
    hidden = torch.clamp(first.weight @ g + first.bias, min=0)
    scores = (last.weight @ hidden + last.bias) / gate.temperature
    a = torch.exp(scores) / torch.exp(scores).sum()
    kernel = sum(a[k] * gate.weight[k] for k in range(len(a)))
    return squashed(conv_by_hand(pooled_by_hand(f), kernel))


# --- each family against its definition --------------------------------------------


def test_psa_fused_map_and_scale_parts_match_the_definition() -> None:
    gate = randomised(PyramidSpatialAttention())
    gate.floor.fill_(0.8)
    features = torch.randn(2, 6, 8, 8)
    with torch.no_grad(), capture_maps(nn.Sequential(gate), "all") as maps:
        out = gate(features)
    capture = maps["0"]
    assert set(capture.parts) == {"scale 1", "scale 1/2", "scale 1/4"}
    for n in range(2):
        fused, scales = psa_by_hand(gate, features[n])
        torch.testing.assert_close(capture.weights[n, 0], fused, atol=1e-5, rtol=1e-4)
        for name, expected in zip(("scale 1", "scale 1/2", "scale 1/4"), scales, strict=True):
            weights, weighted = capture.parts[name]
            assert weights.shape == weighted.shape == (2, 1, 8, 8)
            assert weights.min() >= 0.0 and weights.max() <= 1.0
            torch.testing.assert_close(weights[n, 0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, (0.8 + 0.2 * capture.weights) * features)
    assert capture.applied == "0.8 + 0.2 M"
    # The scales do differ: a pyramid whose levels all said the same would show nothing.
    assert (capture.parts["scale 1"][0] - capture.parts["scale 1/4"][0]).abs().max() > 0.01


def test_psa_works_on_sizes_the_scales_do_not_divide() -> None:
    gate = randomised(PyramidSpatialAttention())
    with torch.no_grad(), capture_maps(nn.Sequential(gate), "all") as maps:
        gate(torch.randn(1, 4, 7, 5))
    assert maps["0"].weights.shape == (1, 1, 7, 5)
    assert all(w.shape == (1, 1, 7, 5) for w, _ in maps["0"].parts.values())


def test_multiscale_map_and_dilation_parts_match_the_definition() -> None:
    gate = randomised(DilatedSpatialAttention())
    features = torch.randn(2, 5, 7, 7)
    with torch.no_grad(), capture_maps(nn.Sequential(gate), "all") as maps:
        gate(features)
    capture = maps["0"]
    assert list(capture.parts) == ["dilation 1", "dilation 2", "dilation 3"]
    for n in range(2):
        expected, parts = multiscale_by_hand(gate, features[n])
        torch.testing.assert_close(capture.weights[n, 0], expected, atol=1e-5, rtol=1e-4)
        for (weights, _), part in zip(capture.parts.values(), parts, strict=True):
            torch.testing.assert_close(weights[n, 0], part, atol=1e-5, rtol=1e-4)


def test_lightweight_map_matches_the_definition_and_is_far_smaller_than_bam() -> None:
    gate = randomised(DepthwiseSeparableGate(6))
    features = torch.randn(2, 6, 5, 6)
    with torch.no_grad(), capture_maps(nn.Sequential(gate), "all") as maps:
        gate(features)
    for n in range(2):
        expected = lightweight_by_hand(gate, features[n])
        torch.testing.assert_close(maps["0"].weights[n, 0], expected, atol=1e-5, rtol=1e-4)
    # On the head's 1280 channels: C * (9 + 1) weights, against BAM's spatial branch.
    light = sum(p.numel() for p in DepthwiseSeparableGate(1280).parameters())
    bam = sum(p.numel() for p in BAM(1280).spatial_att.parameters())
    assert light == 1280 * 10 and bam > 15 * light


def test_dynamic_kernel_is_chosen_per_photo_as_defined() -> None:
    gate = randomised(DynamicKernelGate(6, kernels=3, kernel_size=3))
    features = torch.randn(3, 6, 5, 5)
    features[1] *= 4.0  # a photo with other global content gets another mixture
    with torch.no_grad(), capture_maps(nn.Sequential(gate), "all") as maps:
        gate(features)
    for n in range(3):
        expected = dynamic_by_hand(gate, features[n])
        torch.testing.assert_close(maps["0"].weights[n, 0], expected, atol=1e-5, rtol=1e-4)
    a = gate.mixture(features)
    torch.testing.assert_close(a.sum(1), torch.ones(3))
    assert (a[0] - a[1]).abs().max() > 1e-3
    assert list(maps["0"].parts) == ["kernel 1", "kernel 2", "kernel 3"]


def test_bam_gate_applies_bams_residual_form_above_its_floor_and_shows_its_spatial_map() -> None:
    """BAM's (1 + sigmoid(c s)) F is 2 (0.5 + 0.5 sigmoid(c s)) F; the Lite0 slot makes the
    0.5 a floor, and standardises the spatial logits: s = 4 z - 4, M = sigmoid(s)."""
    gate = randomised(BAMGate(32))
    gate.floor.fill_(0.5)
    plain = BAM(32).eval()
    plain.load_state_dict(gate.state_dict(), strict=False)  # the authors' module, same weights
    features = torch.randn(2, 32, 6, 6)
    with torch.no_grad(), capture_maps(nn.Sequential(gate), "all") as maps:
        out = gate(features)
        spatial = plain.spatial_att(features)
        channel = plain.channel_att(features)
    s = torch.stack([4 * standardised(spatial[n, 0], eps=1e-3) - 4 for n in range(2)])[:, None]
    torch.testing.assert_close(maps["0"].weights, torch.sigmoid(s))
    torch.testing.assert_close(out, (0.5 + 0.5 * torch.sigmoid(channel * s)) * features)
    assert maps["0"].applied == "0.5 + 0.5 sigmoid(c s), M = sigmoid(s)"
    # With the authors' logits (no standardisation), floor 0.5 is their module halved.
    gate.sharpness.fill_(1.0)
    gate.offset.fill_(0.0)
    with torch.no_grad():
        unit = torch.stack([standardised(spatial[n, 0], eps=1e-3) for n in range(2)])[:, None]
        authors = (1 + torch.sigmoid(channel * unit)) * features
        torch.testing.assert_close(2 * gate.gated(features, torch.sigmoid(unit)), authors)
    # BAM only scales up from its floor: the mean fill of multiplicative gates does nothing.
    gate.fill = 0.7
    with torch.no_grad():
        torch.testing.assert_close(gate.gated(features, torch.sigmoid(unit)), authors / 2)


# --- the interface every family shares -----------------------------------------------


@pytest.mark.parametrize("family", sorted(GATE_FAMILIES))
def test_every_family_is_attention_with_unit_maps_and_leaves_no_hooks(family: str) -> None:
    model = Toy(randomised(build_gate(family, 8), seed=1))
    assert isinstance(model.gate, Lite0Gate)
    assert [name for name, _ in attention_layers(model)] == ["gate"]
    x = torch.randn(2, 3, 12, 10)
    before = hook_count(model)
    with torch.no_grad(), capture_maps(model, "all") as maps:
        logits = model(x)
    assert hook_count(model) == before == 0
    assert logits.shape == (2, 5)
    capture = maps["gate"]
    assert capture.weights.shape == capture.weighted.shape == (2, 1, 12, 10)
    assert capture.weights.min() >= 0.0 and capture.weights.max() <= 1.0
    assert capture.weights.std() > 1e-3  # random weights give a graded map
    for weights, weighted in capture.parts.values():
        assert weights.min() >= 0.0 and weights.max() <= 1.0 and (weighted >= 0).all()
    with pytest.raises(RuntimeError), capture_maps(model, "all"):
        raise RuntimeError("boom")
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", sorted(GATE_FAMILIES))
def test_gated_is_the_forward_pass_and_fill_refills_what_is_suppressed(family: str) -> None:
    gate = randomised(build_gate(family, 8), seed=2)
    gate.floor.fill_(0.6)
    features = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        weights = gate.attention_map(features)
        torch.testing.assert_close(gate.gated(features, weights), gate(features))
        if family == "bam":
            return  # residual: checked against the authors' module above
        torch.testing.assert_close(gate(features), (0.6 + 0.4 * weights) * features)
        gate.fill = 0.5
        applied = 0.6 + 0.4 * weights
        mean = features.mean(dim=(2, 3), keepdim=True)
        expected = features * applied + (1 - applied) * 0.5 * mean
        torch.testing.assert_close(gate.gated(features, weights), expected)


def test_lite0s_cbam_gate_standardises_its_logits_and_applies_its_floor() -> None:
    """M = sigmoid(4 z - 4), z the conv's logits standardised over the photo's positions;
    F_out = (floor + (1 - floor) M) F, and the capture's caption says so."""
    gate = randomised(build_gate("cbam", 8), seed=4)
    gate.floor.fill_(0.9)  # type: ignore[operator]
    features = torch.randn(2, 8, 6, 6)
    conv = gate.spatial.conv  # type: ignore[union-attr]
    with torch.no_grad():
        weights = gate.attention_map(features)  # type: ignore[operator]
        for n in range(2):
            logits = conv_by_hand(pooled_by_hand(features[n]), conv.weight[0]) + conv.bias[0]
            z = (logits - logits.mean()) / (logits.std(correction=0) + 1e-3)
            torch.testing.assert_close(weights[n, 0], torch.sigmoid(4 * z - 4), atol=1e-5, rtol=0)
        torch.testing.assert_close(gate(features), features * (0.9 + 0.1 * weights))
        capture = gate.capture_attention((features,), None)  # type: ignore[operator]
    assert capture.applied == "0.9 + 0.1 M"
    # Both ends of the scale are used on each photo, whatever the logits' level.
    spans = weights.amax(dim=(1, 2, 3)) - weights.amin(dim=(1, 2, 3))
    assert (spans > 0.5).all()


@pytest.mark.parametrize("family", ["cbam", "multiscale", "lightweight", "dynamic"])
def test_seeded_gates_start_from_the_standardised_channel_mean(family: str) -> None:
    gate = randomised(build_gate(family, 8), seed=3)
    torch.manual_seed(0)
    gate.seed(SEED_SLOPE)  # type: ignore[operator]
    features = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        weights = gate.attention_map(features)  # type: ignore[operator]
    mean = features[0].mean(0)
    # The lightweight gate sees the channels themselves; the others their standardised pools.
    expected = squashed(SEED_SLOPE * (mean if family == "lightweight" else standardised(mean)))
    if family == "dynamic":
        # Its kernels are spread a little around the seed (SEED_JITTER), which the
        # standardisation magnifies: the map follows the channel mean, not exactly.
        a, b = weights[0, 0].flatten(), expected.flatten()
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    else:
        torch.testing.assert_close(weights[0, 0], expected, atol=1e-5, rtol=0)


def test_seeded_psa_starts_from_the_channel_mean_at_every_scale() -> None:
    gate = randomised(PyramidSpatialAttention())
    gate.seed(SEED_SLOPE)
    features = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        scales = [gate.squashed(lg) for lg in gate.part_logits(features).values()]
    full = pooled_by_hand(features[0])[0]
    torch.testing.assert_close(scales[0][0, 0], squashed(SEED_SLOPE * full), atol=1e-5, rtol=0)
    coarse = full.reshape(2, 4, 2, 4).mean(dim=(1, 3))  # the 1/4 scale's 2x2 block means
    up = F.interpolate(coarse[None, None], (8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(scales[2][0, 0], squashed(SEED_SLOPE * up[0, 0]), atol=1e-5, rtol=0)


def test_seeded_bam_block_gate_starts_flat_just_above_its_floor() -> None:
    gate = randomised(BAMGate(40))
    gate.seed(SEED_SLOPE)
    gate.floor.fill_(FLOORS[0])
    features = torch.randn(2, 40, 6, 6)
    with torch.no_grad():
        weights = gate.attention_map(features)
        out = gate(features)
    closed = torch.sigmoid(torch.tensor(-4.0)).item()  # a flat map's standardised sigmoid
    torch.testing.assert_close(weights, torch.full_like(weights, closed))
    torch.testing.assert_close(out, features * (FLOORS[0] + (1 - FLOORS[0]) * closed))


@pytest.mark.parametrize("family", sorted(GATE_FAMILIES))
def test_seeded_head_gate_and_gain_leave_a_flat_head_unchanged(family: str) -> None:
    torch.manual_seed(0)
    model = EfficientNetLite(gate_head=True, gate_family=family).eval()
    seed_gates(model)
    flat = torch.rand(1, 320, 1, 1).expand(1, 320, 7, 7).contiguous()
    with torch.no_grad():
        gated = model.head(flat)
        with model.gates_disabled():
            bare = model.head(flat)
    # The dynamic gate's jittered kernels (SEED_JITTER) turn the rounding left in a flat
    # map's standardisation into a faint pattern (M from 0.01 to 0.07 instead of 0.018).
    tolerance = 0.02 if family == "dynamic" else 1e-3
    torch.testing.assert_close(gated, bare, atol=tolerance, rtol=tolerance)


def test_an_unknown_family_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AttnvizError, match="unknown gate family 'nope'.*psa"):
        TrainConfig(data=[tmp_path], family="nope")
    code, output = run_cli("train", tmp_path, "--family", "nope")
    assert code != 0 and "unknown gate family 'nope'" in output and "Traceback" not in output


def test_default_outputs_and_floors_and_the_options_each_family_refuses(tmp_path: Path) -> None:
    assert TrainConfig(data=[tmp_path], family="psa").out == Path(
        "pretrained/lite0-psa.safetensors"
    )
    cbam = TrainConfig(data=[tmp_path])
    assert cbam.floors == (0.95, 0.95, 0.95, 0.7) and cbam.evidence == 1.0
    for floors in ("0.9,0.9,0.5", "0.9,0.9,0.9,1.5", "0.9,x,0.9,0.5"):
        code, output = run_cli("train", tmp_path, "--family", "psa", "--floors", floors)
        assert code == 2 and "floor" in output and "Traceback" not in output, output
    code, output = run_cli("train", tmp_path, "--family", "bam", "--area", "0.5")
    assert code == 2 and "attnpool" in output, output
    assert cbam.offsets == (-4.0, -4.0, -4.0, -4.0)
    for offsets in ("-4,-4,-4", "-4,x,-4,-4", "-4,nan,-4,-4"):
        code, output = run_cli("train", tmp_path, "--family", "bam", f"--offsets={offsets}")
        assert code == 2 and "offset" in output and "Traceback" not in output, output
    for family in ("attnpool", "deform"):
        code, output = run_cli("train", tmp_path, "--family", family, "--offsets=-3,-3,-3,-3")
        assert code == 2 and f"not {family}'s" in output, output
    # Refused for what it is, even when empty or not numbers: not a parse error, not ignored.
    for family, floors in (("deform", "x"), ("attnpool", "")):
        code, output = run_cli("train", tmp_path, "--family", family, "--floors", floors)
        assert code == 2 and f"not {family}'s" in output, output


def test_each_gate_starts_from_its_floor_and_offset() -> None:
    torch.manual_seed(0)
    model = build_lite0("bam", with_gates=False)
    seed_gates(model, (0.9, 0.95, 0.95, 0.7), (-4.0, -3.0, -4.0, -2.5))  # type: ignore[arg-type]
    state = model.state_dict()
    assert [float(state[f"attention.{g}.offset"]) for g in LITE0_GATES] == [-4, -3, -4, -2.5]
    assert [float(state[f"attention.{g}.floor"]) for g in LITE0_GATES] == pytest.approx(
        [0.9, 0.95, 0.95, 0.7]
    )
    # The map is sigmoid(4 z + offset): raising the offset by 1 adds 1 to every logit of M.
    gate = model.attention["block15"].double()  # float64: logit(M) stays exact near 1
    nn.init.normal_(gate.spatial_att.gate_s.gate_s_conv_final.weight)  # a map with a shape
    features = torch.randn(2, 320, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        before = gate.attention_map(features)
        gate.offset.fill_(-3.0)
        after = gate.attention_map(features)
    torch.testing.assert_close(torch.logit(after), torch.logit(before) + 1.0, atol=1e-6, rtol=0)


# --- training: a short real run per family, interrupted and resumed ------------------


@pytest.fixture(scope="module")
def trunk_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trunk cache for every family: the cached features do not depend on the gates."""
    return tmp_path_factory.mktemp("cache") / "trunk.pt"


@contextlib.contextmanager
def resume_every(steps: int) -> Iterator[None]:
    import attnviz.training.gates

    saved, attnviz.training.gates.RESUME_EVERY = attnviz.training.gates.RESUME_EVERY, steps
    try:
        yield
    finally:
        attnviz.training.gates.RESUME_EVERY = saved


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_a_short_run_trains_and_resumes_each_family(
    family: str, training_photos: Path, trunk_cache: Path, tmp_path: Path
) -> None:
    def config(name: str) -> TrainConfig:
        return TrainConfig(data=[training_photos], family=family, out=tmp_path / name, steps=4,
                           batch_size=4, holdout=4, size=96, cache=trunk_cache)  # fmt: skip

    straight = config("straight.safetensors")
    logged: list[dict[str, float]] = []
    report = train_gates(straight, on_step=lambda _step, _total, stats: logged.append(stats))
    assert len(logged) == 4 and all(s["kl"] >= 0 for s in logged)
    assert 0.0 <= report.holdout_agreement <= 1.0 and len(report.holdout_map_means) == 4

    def stop_after_step_2(step: int, _total: int, _stats: dict[str, float]) -> None:
        if step == 2:
            raise KeyboardInterrupt

    resumed = config("resumed.safetensors")
    with resume_every(2), pytest.raises(KeyboardInterrupt):
        train_gates(resumed, on_step=stop_after_step_2)
    assert resume_path(resumed.out).is_file()  # type: ignore[arg-type]
    with resume_every(2):
        assert train_gates(resumed).resumed_from == 2

    a, b = load_file(str(straight.out)), load_file(str(resumed.out))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    # The file is what lite0-FAMILY loads: every gate key, strictly.
    model = build_lite0(family, with_gates=False)
    missing, unexpected = model.load_state_dict(a, strict=False)
    assert not unexpected
    assert {k.split(".")[1] for k in a if k.startswith("attention.")} == set(LITE0_GATES)
    assert not [k for k in missing if k.startswith("attention.") or k == "pool_gain"]
    # Training moved the gates' shape away from where train_gates seeded it.
    torch.manual_seed(straight.seed)
    seeded = build_lite0(family, with_gates=False)
    seed_gates(seeded)  # type: ignore[arg-type]
    seeded_state = seeded.state_dict()
    shapes = {
        f"attention.{name}.{key}"
        for name, gate in seeded.attention.items()
        for key, p in gate.named_parameters()
        if any(p is shape for shape in gate.shape_parameters())
    }
    assert shapes and any(not torch.equal(a[k], seeded_state[k]) for k in shapes)


# --- the shipped weights -------------------------------------------------------------


def test_every_shipped_family_is_registered_and_the_others_are_not() -> None:
    from attnviz.models.registry import LITE0_BLOCKS, MODELS

    # Other families, not gate slots: the hosted blocks and the attention-gated pooling.
    hosts = {f"lite0-{kind}" for kind in LITE0_BLOCKS} | {"lite0-attnpool"}
    lite0 = {name for name in MODELS if name.startswith("lite0-")} - hosts
    assert lite0 == {"lite0-cbam"} | {f"lite0-{f}" for f in SHIPPED_FAMILIES}


@pytest.mark.parametrize("family", SHIPPED_FAMILIES)
def test_shipped_family_loads_strictly_and_gives_graded_maps(family: str) -> None:
    shipped = load_file(str(pretrained_file(lite0_gates_file(family))))
    assert "pool_gain" in shipped
    assert set(shipped) - {"pool_gain"} == {
        k for k in EfficientNetLite(gate_after=(4, 10, 15), gate_head=True, gate_family=family)
        .state_dict() if k.startswith("attention.")
    }  # fmt: skip
    spec = get_spec(f"lite0-{family}")
    model = attnviz.load_model(f"lite0-{family}", device="cpu")  # loads strictly
    assert select_layers(model.net, spec.default_layer) == ["attention.head"]
    photos = [load_rgb(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    with torch.inference_mode(), capture_maps(model.net, "all") as maps:
        model(model.preprocess(photos))
    assert set(maps) == {f"attention.{g}" for g in LITE0_GATES}
    for name, capture in maps.items():
        weights = capture.weights[:, 0]
        assert weights.min() >= 0.0 and weights.max() <= 1.0
        # Every map uses its scale: a gate that stays open everywhere is not attention.
        per_photo_range = weights.amax(dim=(1, 2)) - weights.amin(dim=(1, 2))
        assert (per_photo_range > 0.3).all(), f"{name} spans {per_photo_range.tolist()}"
        # Half the scale on a typical photo.
        assert per_photo_range.quantile(0.5) >= 0.5, f"{name}: {per_photo_range.tolist()}"
        spread = (weights[0] - weights[1]).abs().mean()
        assert spread > 0.01, f"{name}: same map for two photos"
        floor = float(model.net.get_submodule(name).floor)
        assert capture.applied is not None and capture.applied.startswith(f"{floor:g} + ")
