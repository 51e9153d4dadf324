"""A user's own model: ``--model path/to/file.py:factory``.

This runs the user's Python file, by design: it is their code, chosen by them, like
``python file.py``. It is the one way attnviz executes code it did not ship; weight files
never do (see weights.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from torch import nn

from attnviz.errors import AttnvizError, UsageError
from attnviz.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, WeightsSource


def is_user_model(name: str) -> bool:
    return ".py:" in name


def user_model_spec(ref: str) -> ModelSpec:
    """A ModelSpec whose builder calls ``factory()`` from ``file.py`` (ImageNet preprocessing)."""
    file_part, _, factory_name = ref.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise UsageError(f"--model {ref}: no such file {path}")
    if not factory_name.isidentifier():
        raise UsageError(f"--model {ref}: {factory_name!r} is not a Python name")

    def build(random_init: bool) -> nn.Module:
        factory = getattr(_import_file(path), factory_name, None)
        if not callable(factory):
            raise UsageError(f"--model {ref}: {path} defines no function {factory_name}()")
        try:
            net = factory()
        except Exception as exc:  # noqa: BLE001 - the user's code: report it in one line
            raise AttnvizError(f"--model {ref}: {factory_name}() raised {exc!r}") from exc
        if not isinstance(net, nn.Module):
            raise UsageError(f"--model {ref}: {factory_name}() returned {type(net).__name__}")
        return net

    return ModelSpec(
        ref, "user", 224, WeightsSource.USER, f"{factory_name}() from {path}", build,
        IMAGENET_MEAN, IMAGENET_STD,
    )  # fmt: skip


def _import_file(path: Path) -> object:
    name = f"attnviz_user_model_{abs(hash(path.resolve()))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code: report it in one line
        raise AttnvizError(f"{path}: importing it raised {exc!r}") from exc
    sys.modules[name] = module
    return module
