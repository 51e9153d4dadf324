"""Spatial attention in a network: which layers are attention (attnviz's own ``protocol``,
``adapters`` for third-party classes, ``discovery`` of the rest by what they compute), which
of them a selector picks and how their maps are captured (``capture``; ``tap`` and ``watch``
for discovered layers), through the hooks that ``hooks`` registers and removes."""

from attnviz.attention.capture import (
    attention_layers,
    capture_maps,
    capturer_for,
    layer_capturers,
    reads_query,
    select_layers,
)
from attnviz.attention.discovery import discover, discovered
from attnviz.attention.protocol import AttentionCapture, SpatialAttention, is_spatial_attention

__all__ = [
    "AttentionCapture",
    "SpatialAttention",
    "attention_layers",
    "capture_maps",
    "capturer_for",
    "discover",
    "discovered",
    "layer_capturers",
    "is_spatial_attention",
    "reads_query",
    "select_layers",
]
