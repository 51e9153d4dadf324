from attnviz.attention.capture import capture_maps, reads_query, select_layers
from attnviz.attention.protocol import (
    AttentionCapture,
    SpatialAttention,
    attention_layers,
    is_spatial_attention,
)

__all__ = [
    "AttentionCapture",
    "SpatialAttention",
    "attention_layers",
    "capture_maps",
    "is_spatial_attention",
    "reads_query",
    "select_layers",
]
