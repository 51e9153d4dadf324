"""attnviz: see where a vision network's spatial attention lands.

The library API (``load_model``, ``capture``, ``discover``, ``triptych``) is imported lazily so that
``import attnviz`` (and ``attnviz --help``) does not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
# The model `attnviz run` (and every command and function with a --model) uses by default.
DEFAULT_MODEL = "lite0-attnpool"
__all__ = ["capture", "discover", "load_model", "triptych"]

if TYPE_CHECKING:
    from attnviz.api import capture, discover, load_model, triptych


def __getattr__(name: str) -> Any:
    if name in __all__:
        from attnviz import api

        return getattr(api, name)
    raise AttributeError(f"module 'attnviz' has no attribute {name!r}")
