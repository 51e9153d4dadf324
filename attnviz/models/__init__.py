"""Built-in attention models and the loader shared by the CLI and the library API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from attnviz import DEFAULT_MODEL
from attnviz.attention.capture import declared_layers
from attnviz.attention.discovery import discover
from attnviz.errors import AttnvizError, UsageError
from attnviz.models.efficientnet_lite import EfficientNetLite
from attnviz.models.registry import MODELS, ModelSpec, WeightsSource, closest_hint, get_spec
from attnviz.models.weights import check_trained_for, load_into, read_state_dict

__all__ = ["MODELS", "LoadedModel", "ModelSpec", "WeightsSource", "load_model", "resolve_device"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable device is a usage error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device 'mps' requested but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass
class LoadedModel:
    """A network in eval mode on its device, with the preprocessing it was trained with."""

    net: nn.Module
    spec: ModelSpec
    device: torch.device
    size: int

    @property
    def channels_last(self) -> bool:
        """Whether photos go in as channels_last: only for the models attnviz wrote."""
        return not self.spec.discover

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """RGB uint8 photos -> a normalised batch on the device.

        The whole photo is resized (bicubic) to size x size, never cropped, so the maps
        cover every pixel the user sees in the first panel.
        """
        batch = np.stack([_resize(image, self.size) for image in images])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        # channels_last suits attnviz's own convolutional models; code it did not write may
        # .view() its tensors, which needs the standard layout.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=layout)

    def __call__(self, x: Tensor) -> object:
        return self.net(x)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    device: str | torch.device = "auto",
    *,
    size: int | None = None,
    random_init: bool = False,
    fold_batchnorm: bool = True,
) -> LoadedModel:
    """Build a built-in model with its weights, in eval mode on ``device``, for inference.

    With ``fold_batchnorm`` (the default) the Lite0 trunk's BatchNorms are folded into the
    convolutions that feed them: the same logits, a faster forward, but ``.net`` then has no
    BatchNorm keys, so it is not for training or for saving as a checkpoint of the model.

    ``weights`` replaces the default weights with a checkpoint file (safetensors or a
    tensors-only torch file). For the built-ins with trained gates it may hold the gates
    alone, as ``attnviz train`` writes them: the trunk then comes from its package, as for the
    shipped model. ``random_init`` skips weights for structure checks.
    """
    spec = get_spec(name)
    if spec.fixed_size and size not in (None, spec.input_size):
        raise UsageError(f"{spec.name} works at {spec.input_size} px only, not --size {size}")
    target = device if isinstance(device, torch.device) else resolve_device(device)
    if weights is not None:
        path = Path(weights)
        check_trained_for(path, spec.name)  # from its metadata, before reading its tensors
        state = read_state_dict(path, given=True)
        net = spec.build(True)
        if spec.with_gates is not None and set(state) <= set(net.state_dict()):
            # Gates alone (or a whole checkpoint): the rest from the package, as shipped.
            net = spec.with_gates(gates=state, source=str(path))
        else:  # keys of another model: say which, against the whole model
            load_into(net, state, str(path), model_name=spec.name, hint=closest_hint(spec.name))
    else:
        net = spec.build(random_init)
    net.eval()
    if fold_batchnorm:  # training builds its nets without load_model
        for trunk in [m for m in net.modules() if isinstance(m, EfficientNetLite)]:
            trunk.fold_batchnorm()
    loaded = LoadedModel(net, spec, target, size or spec.input_size)
    layout = torch.channels_last if loaded.channels_last else torch.preserve_format
    # In place (loaded.net is net); torch's stubs lack Module.to's (device, memory_format) form.
    net.to(target, memory_format=layout)  # type: ignore[call-overload]
    if spec.discover:
        find_attention(net, loaded.size, target)
    return loaded


def find_attention(net: nn.Module, size: int, device: torch.device | str = "cpu") -> None:
    """Discovery's probe pass on a model attnviz did not write (see attention/discovery.py):
    one forward of two fixed random photos at the size the run uses (two, so that what
    belongs to each photo can be told apart)."""
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        discover(net, probe.to(device), covered=set(declared_layers(net)))
    except Exception as exc:  # noqa: BLE001 - the user's model: report it in one line
        raise AttnvizError(
            f"the model's forward pass failed on a {size}×{size} photo: {exc!r}"
        ) from exc
