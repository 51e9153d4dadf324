"""A user's own model: ``--model path/to/file.py:factory`` or ``--model package.module:factory``.

This runs the user's Python code, by design: it is their code, chosen by them, like
``python file.py`` or ``python -c "import package.module"``. It is the one way attnviz
executes code it did not ship; weight files never do (see weights.py). ``timm:NAME`` is
not a module path: it names a timm model (timm_models.py).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from torch import nn

from attnviz.errors import AttnvizError, UsageError
from attnviz.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, WeightsSource

# package.module:factory (dotted Python names on both sides of the colon).
MODULE_REF = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def is_user_model(name: str) -> bool:
    """Whether ``name`` names a user's model: ``file.py:factory`` or ``package.module:factory``
    (but not ``timm:NAME``)."""
    return ".py:" in name or (MODULE_REF.match(name) is not None and not name.startswith("timm:"))


def user_model_spec(ref: str) -> ModelSpec:
    """A ModelSpec whose builder calls the user's factory (ImageNet preprocessing)."""
    source, _, factory_name = ref.rpartition(":")
    if not factory_name.isidentifier():
        raise UsageError(f"--model {ref}: {factory_name!r} is not a Python name")
    if Path(source).suffix == ".py" or not MODULE_REF.match(ref):
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"--model {ref}: no such file {path}")
        where = str(path)
        load: Callable[[], object] = lambda: _import_file(path)  # noqa: E731
        beside: Callable[[], AbstractContextManager[None]] = lambda: _beside(path)  # noqa: E731
    else:
        where = source
        load = lambda: _import_module(ref, source)  # noqa: E731
        beside = contextlib.nullcontext

    def build(_random_init: bool) -> nn.Module:
        # The factory builds the user's own weights (or none): attnviz has none to skip.
        with beside():
            factory = getattr(load(), factory_name, None)
            if not callable(factory):
                raise UsageError(f"--model {ref}: {where} defines no function {factory_name}()")
            try:
                net = factory()
            except Exception as exc:  # noqa: BLE001 - the user's code: report it in one line
                raise AttnvizError(f"--model {ref}: {factory_name}() raised {exc!r}") from exc
        if not isinstance(net, nn.Module):
            raise UsageError(f"--model {ref}: {factory_name}() returned {type(net).__name__}")
        return net

    return ModelSpec(
        ref, "user", 224, WeightsSource.USER, f"{factory_name}() from {where}", build,
        IMAGENET_MEAN, IMAGENET_STD, discover=True,
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


@contextlib.contextmanager
def _beside(path: Path) -> Iterator[None]:
    """While the user's file is imported and its factory runs: its folder first on sys.path,
    as `python file.py` has it, so it can import its neighbours. Afterwards the folder leaves
    sys.path and the neighbours leave sys.modules, so that another model's folder with a
    file of the same name (two models in one `attnviz compare`) imports its own."""
    folder = path.resolve().parent
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None)
            if name.startswith("attnviz_user_model_") or file is None:
                continue
            if Path(file).resolve().is_relative_to(folder):
                del sys.modules[name]


def _import_module(ref: str, dotted: str) -> object:
    """Import ``dotted`` as ``python -m`` would find it: the current folder first, then the
    installed packages (the console script's own folder is not where users keep models)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        # Missing is the module itself (or its package) only when the name is a prefix of it;
        # anything else is an import inside the user's code.
        if exc.name is not None and (dotted == exc.name or dotted.startswith(exc.name + ".")):
            raise UsageError(
                f"--model {ref}: no module named {exc.name} (looked in the current folder and "
                "the installed packages)"
            ) from None
        raise AttnvizError(f"{dotted}: importing it raised {exc!r}") from exc
    except Exception as exc:  # noqa: BLE001 - the user's code: report it in one line
        raise AttnvizError(f"{dotted}: importing it raised {exc!r}") from exc
