"""Inputs and outputs: finding and decoding images, naming and writing results, the manifest.

No torch here: this package works on files, numpy arrays and JSON only. Its names are
imported from their modules on first use (PEP 562), so that a module needing only
``io.files`` or ``io.inputs`` does not pay for numpy and OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnviz.io.decode import Decoded, decode_image, load_rgb
    from attnviz.io.files import (
        atomic_write_bytes,
        check_writable,
        create_locked_temp,
        remove_stale_temps,
    )
    from attnviz.io.inputs import IMAGE_SUFFIXES, InputItem, Rejected, discover, output_path
    from attnviz.io.manifest import MANIFEST_NAME, ManifestWriter, read_manifest
    from attnviz.io.write import encode_image, write_image, write_npz

_HOMES = {
    "decode": ("Decoded", "decode_image", "load_rgb"),
    "files": ("atomic_write_bytes", "check_writable", "create_locked_temp", "remove_stale_temps"),
    "inputs": ("IMAGE_SUFFIXES", "InputItem", "Rejected", "discover", "output_path"),
    "manifest": ("MANIFEST_NAME", "ManifestWriter", "read_manifest"),
    "write": ("encode_image", "write_image", "write_npz"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST_NAME",
    "Decoded",
    "InputItem",
    "ManifestWriter",
    "Rejected",
    "atomic_write_bytes",
    "check_writable",
    "create_locked_temp",
    "decode_image",
    "discover",
    "encode_image",
    "load_rgb",
    "output_path",
    "read_manifest",
    "remove_stale_temps",
    "write_image",
    "write_npz",
]


def __getattr__(name: str) -> Any:
    if name in _HOME_OF:
        return getattr(importlib.import_module(f"attnviz.io.{_HOME_OF[name]}"), name)
    raise AttributeError(f"module 'attnviz.io' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
