"""Loading weights without ever executing code: safetensors, or torch.load(weights_only=True)."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from attnviz.errors import AttnvizError, UsageError

# Keys of the metadata that attnviz's trainers write into a safetensors file: the built-in
# model whose gates it holds, and the family (`attnviz train --family`) they belong to.
TRAINED_FOR = "attnviz_model"
TRAINED_FAMILY = "attnviz_family"


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file ({} for other files or none)."""
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - an unreadable file is reported when its tensors are read
        return {}


def check_trained_for(path: Path, model_name: str) -> None:
    """A file that `attnviz train` wrote for another model is refused in one line."""
    meta = read_metadata(path)
    trained_for = meta.get(TRAINED_FOR)
    if trained_for is not None and trained_for != model_name:
        family = meta.get(TRAINED_FAMILY, "?")
        raise UsageError(
            f"{path}: gates trained for {trained_for} (family {family}), not {model_name}; "
            f"use --model {trained_for}"
        )


def read_state_dict(path: Path, *, given: bool = False) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``state_dict`` and ``module.`` prefixes.

    ``given``: the user named the file (--weights), so a missing file or one that is no
    weights file at all is a usage error; attnviz's own files missing is a broken install.
    """
    wrong_file = UsageError if given else AttnvizError
    if not path.is_file():
        raise wrong_file(f"{path}: weights file not found")
    try:
        kind = _weights_format(path)
        if kind is None:
            raise wrong_file(
                f"{path}: not a weights file (neither safetensors nor a torch checkpoint)"
            )
        if kind == "safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path))
        else:
            with warnings.catch_warnings():
                # torch warns about pickle protocols it may not read; the error says enough.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except AttnvizError:
        raise
    except pickle.UnpicklingError as exc:
        raise AttnvizError(
            f"{path}: refused to load: the file holds more than tensors ({_refusal(exc)}); "
            "attnviz only loads weights that cannot run code"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise AttnvizError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    return unwrap_state_dict(raw, path)


def _weights_format(path: Path) -> str | None:
    """``safetensors`` (its suffix, or an 8-byte header length and a JSON header), ``torch``
    (torch.save's zip archive, or the legacy pickle) or None: a README or a photo."""
    if path.suffix == ".safetensors":
        return "safetensors"  # a broken one is reported by the safetensors reader
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    return "torch" if head.startswith((b"PK\x03\x04", b"\x80")) else None


def _refusal(exc: pickle.UnpicklingError) -> str:
    # torch's message is a multi-line essay that suggests weights_only=False; keep the fact.
    text = str(exc)
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return f"it would import {found.group(1)}"
    if found := re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text):
        return found.group(1).strip()
    return "not a plain tensor file"


def unwrap_state_dict(raw: object, path: Path | str = "weights") -> dict[str, Tensor]:
    """A loaded file's tensors by key: its ``state_dict`` where it is a checkpoint holding one,
    without the ``module.`` prefix that every key may carry (DataParallel); raises AttnvizError
    (naming ``path``) for anything but a mapping of tensors."""
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise AttnvizError(f"{path}: not a state dict of tensors")
    prefix = "module."
    if raw and all(str(k).startswith(prefix) for k in raw):
        return {str(k)[len(prefix) :]: v for k, v in raw.items()}
    return {str(k): v for k, v in raw.items()}


def load_into(
    model: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    *,
    strict: bool = True,
    model_name: str | None = None,
    hint: Callable[[Mapping[str, Tensor]], str] | None = None,
) -> None:
    """Load ``state`` into ``model``; a mismatch is one readable line, not a traceback.

    With ``model_name`` (the built-in the user chose), the line names that model; ``hint``
    adds what it says about the file (the registry's: the built-in it belongs to).
    """
    target = model_name or "this model"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: keep the first line of torch's report
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        suggestion = hint(state) if hint is not None else ""
        raise UsageError(f"{source}: weights do not fit {target}: {detail}{suggestion}") from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {_examples(unexpected)})")
        suggestion = hint(state) if hint is not None else ""
        raise UsageError(f"{source}: weights do not fit {target}: {'; '.join(parts)}{suggestion}")


def _examples(keys: list[str]) -> str:
    # BatchNorm step counters say nothing about the layout (safetensors sorts them first).
    return ", ".join(sorted(keys, key=lambda key: key.endswith("num_batches_tracked"))[:3])
