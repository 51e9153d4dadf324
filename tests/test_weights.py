"""--weights: files that could run code are refused, tensors load, a mismatch names its fix."""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from attnviz.errors import AttnvizError
from attnviz.models import load_model
from attnviz.models.registry import MODELS
from attnviz.models.weights import load_into, read_state_dict
from tests.conftest import attnviz, write_photo


class TouchesMarker:
    """Unpickling this creates ``marker``: stands for any payload that runs code on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def _save_torch(obj: object, path: Path) -> None:
    torch.save(obj, path)


def _save_pickle(obj: object, path: Path) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


SAVERS = pytest.mark.parametrize("save", [_save_torch, _save_pickle], ids=["torch", "pickle"])


def _malicious(path: Path, marker: Path, save: Callable[[object, Path], None]) -> Path:
    # Real tensors around the payload, as a trojaned checkpoint would have.
    save({"conv1.weight": torch.zeros(2, 2), "x": TouchesMarker(marker)}, path)
    return path


def _state(name: str) -> dict[str, Tensor]:
    return {k: v.contiguous() for k, v in MODELS[name].build(True).state_dict().items()}


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(_state("cbam-resnet18"), str(path))
    return path


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# --- files that would run code -------------------------------------------------------------


def test_the_payload_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    # The control for the tests below: an ordinary unpickler does create the marker.
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(TouchesMarker(marker)))
    assert marker.exists()


@SAVERS
def test_pickle_that_would_run_code_is_refused(
    tmp_path: Path, save: Callable[[object, Path], None]
) -> None:
    marker = tmp_path / "MARKER"
    path = _malicious(tmp_path / "evil.pt", marker, save)
    with pytest.raises(AttnvizError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert message.startswith(f"{path}: refused to load")
    assert "cannot run code" in message
    assert "weights_only" not in message  # torch's advice to turn the safety off is dropped
    assert not marker.exists()


@SAVERS
def test_cli_refuses_code_carrying_weights_and_runs_nothing(
    tmp_path: Path, save: Callable[[object, Path], None]
) -> None:
    marker = tmp_path / "MARKER"
    bad = _malicious(tmp_path / "evil.pt", marker, save)
    photo = write_photo(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--weights", bad, "--out", out)
    assert code == 1, output
    [line] = _error_lines(output)
    assert str(bad) in line and "refused to load" in line and "cannot run code" in line
    assert not marker.exists()
    assert not out.exists() or not list(out.rglob("*.png"))


# --- files that hold only tensors -----------------------------------------------------------


def _write(state: dict[str, Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_tensors_only_file_round_trips(tmp_path: Path, suffix: str) -> None:
    state = {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "bn.num_batches_tracked": torch.tensor(7),
        "fc.bias": torch.arange(5, dtype=torch.float16),
    }
    loaded = read_state_dict(_write(state, tmp_path / f"w{suffix}"))
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"state_dict": s, "epoch": 90},
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "best_prec1": 77.6},
    ],
    ids=["state_dict", "module.", "both"],
)
def test_state_dict_and_module_wrapping_is_unwrapped(
    tmp_path: Path, wrap: Callable[[dict[str, Tensor]], object]
) -> None:
    state = {"conv1.weight": torch.randn(2, 3, 1, 1), "fc.bias": torch.randn(2)}
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(state), path)
    loaded = read_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_full_builtin_checkpoint_loads_through_load_model(resnet18_file: Path) -> None:
    model = load_model("cbam-resnet18", weights=resnet18_file, device="cpu")
    expected = read_state_dict(resnet18_file)
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


# --- weights for another architecture -------------------------------------------------------


def _examples(message: str, kind: str) -> list[str]:
    found = re.search(rf"\d+ {kind} \(e\.g\. ([^)]*)\)", message)
    assert found, message
    return found.group(1).split(", ")


def test_wrong_architecture_names_keys_and_the_closest_builtin(resnet18_file: Path) -> None:
    with pytest.raises(AttnvizError) as caught:
        load_model("lite0-cbam", weights=resnet18_file, device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{resnet18_file}: weights do not fit lite0-cbam: ")
    lite0, resnet18 = set(_state("lite0-cbam")), set(_state("cbam-resnet18"))
    missing, unexpected = _examples(message, "missing"), _examples(message, "unexpected")
    assert len(missing) == 3 and set(missing) <= lite0 - resnet18
    assert len(unexpected) == 3 and set(unexpected) <= resnet18 - lite0
    assert message.endswith("; closest built-in model: cbam-resnet18 (100% of keys match)")


def test_shape_mismatch_also_names_the_closest_builtin(resnet18_file: Path) -> None:
    # ResNet-18 and -50 share many key names, but not their shapes.
    with pytest.raises(AttnvizError, match="size mismatch for") as caught:
        load_model("cbam-resnet50", weights=resnet18_file, device="cpu")
    assert "closest built-in model: cbam-resnet18" in str(caught.value)


def test_a_deeper_resnet_is_suggested_by_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / "r50.safetensors"
    save_file(_state("cbam-resnet50"), str(path))
    with pytest.raises(AttnvizError, match=r"\d+ missing \(e\.g\. layer3\.6\.") as caught:
        load_model("cbam-resnet101", weights=path, device="cpu")
    assert str(caught.value).endswith("closest built-in model: cbam-resnet50 (100% of keys match)")


@pytest.mark.parametrize(
    ("model", "state"),
    [
        # The chosen model is itself the closest: a fine-tuned 10-class head.
        ("cbam-resnet18", lambda: {**_state("cbam-resnet18"), "fc.weight": torch.zeros(10, 512)}),
        # Nothing built-in comes near.
        ("lite0-cbam", lambda: {"encoder.weight": torch.zeros(3), "fc.bias": torch.zeros(1000)}),
    ],
    ids=["itself", "none-near"],
)
def test_no_suggestion_without_a_better_builtin(
    tmp_path: Path, model: str, state: Callable[[], dict[str, Tensor]]
) -> None:
    path = tmp_path / "w.safetensors"
    save_file(state(), str(path))
    with pytest.raises(AttnvizError, match="weights do not fit") as caught:
        load_model(model, weights=path, device="cpu")
    assert "closest" not in str(caught.value)


def test_load_into_without_a_model_name_suggests_nothing(resnet18_file: Path) -> None:
    net = MODELS["lite0-cbam"].build(True)
    with pytest.raises(AttnvizError, match="do not fit this model") as caught:
        load_into(net, read_state_dict(resnet18_file), "file")
    assert "closest" not in str(caught.value)


def test_cli_wrong_weights_is_one_line_naming_the_closest(
    tmp_path: Path, resnet18_file: Path
) -> None:
    photo = write_photo(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    code, output = attnviz("run", photo, "--weights", resnet18_file, "--out", out)
    assert code == 2, output  # the wrong file for the model: a usage error (issue 21)
    [line] = _error_lines(output)
    assert "weights do not fit lite0-attnpool" in line and "missing (e.g. " in line
    assert line.endswith("closest built-in model: cbam-resnet18 (100% of keys match)")
