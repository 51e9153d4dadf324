"""Loading weights without ever executing code: safetensors, or torch.load(weights_only=True)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from attnviz.errors import AttnvizError


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``state_dict`` and ``module.`` prefixes."""
    if not path.is_file():
        raise AttnvizError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not a plain tensor file"
        raise AttnvizError(
            f"{path}: refused to load: the file holds more than tensors ({reason}); "
            "attnviz only loads weights that cannot run code"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise AttnvizError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    return unwrap_state_dict(raw, path)


def unwrap_state_dict(raw: object, path: Path | str = "weights") -> dict[str, Tensor]:
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise AttnvizError(f"{path}: not a state dict of tensors")
    prefix = "module."
    if raw and all(str(k).startswith(prefix) for k in raw):
        return {str(k)[len(prefix) :]: v for k, v in raw.items()}
    return {str(k): v for k, v in raw.items()}


def load_into(
    model: nn.Module, state: Mapping[str, Tensor], source: str, *, strict: bool = True
) -> None:
    """Load ``state`` into ``model``; a mismatch is one readable line, not a traceback."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: keep the first line of torch's report
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise AttnvizError(f"{source}: weights do not fit this model: {detail}") from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise AttnvizError(f"{source}: weights do not fit this model: {'; '.join(parts)}")
