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
from attnviz.models.registry import MODELS, ModelSpec, WeightsSource, get_spec

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

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """RGB uint8 photos -> a normalised batch on the device.

        The whole photo is resized (bicubic) to size x size, never cropped, so the maps
        cover every pixel the user sees in the first panel.
        """
        batch = np.stack([_resize(image, self.size) for image in images])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

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
) -> LoadedModel:
    """Build a built-in model with its weights, in eval mode on ``device``.

    ``weights`` replaces the default weights with a checkpoint file (safetensors or a
    tensors-only torch file); ``random_init`` skips weights for structure checks.
    """
    from attnviz.models.weights import load_into, read_state_dict

    spec = get_spec(name)
    if spec.fixed_size and size not in (None, spec.input_size):
        raise UsageError(f"{spec.name} works at {spec.input_size} px only, not --size {size}")
    target = device if isinstance(device, torch.device) else resolve_device(device)
    if weights is not None:
        net = spec.build(True)
        load_into(net, read_state_dict(Path(weights)), str(weights), model_name=spec.name)
    else:
        net = spec.build(random_init)
    net = net.eval().to(target, memory_format=torch.channels_last)
    loaded = LoadedModel(net, spec, target, size or spec.input_size)
    if spec.discover:
        find_attention(net, loaded.size, target)
    return loaded


def find_attention(net: nn.Module, size: int, device: torch.device | str = "cpu") -> None:
    """Discovery's probe pass on a model attnviz did not write (see attention/discovery.py):
    one forward of a fixed random photo at the size the run uses."""
    probe = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        discover(net, probe.to(device), covered=set(declared_layers(net)))
    except Exception as exc:  # noqa: BLE001 - the user's model: report it in one line
        raise AttnvizError(
            f"the model's forward pass failed on a {size}×{size} photo: {exc!r}"
        ) from exc
