"""Inputs and outputs: finding and decoding images, naming and writing results, the manifest.

No torch here: this package works on files, numpy arrays and JSON only.
"""

from attnviz.io.decode import DEFAULT_MAX_PIXELS, Decoded, decode_image, load_rgb
from attnviz.io.inputs import IMAGE_SUFFIXES, InputItem, Rejected, discover, output_path
from attnviz.io.manifest import MANIFEST_NAME, ManifestWriter, read_manifest
from attnviz.io.write import (
    FORMATS,
    atomic_write_bytes,
    check_writable,
    create_locked_temp,
    encode_image,
    remove_stale_temps,
    write_image,
    write_npz,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Decoded",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "MANIFEST_NAME",
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
