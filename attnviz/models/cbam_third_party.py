"""CBAM as other projects wrote it: the CBAM authors' ``SpatialGate`` and timm's CBAM layers.

Their classes cannot follow attnviz's protocol, so adapters (attention/adapters.py) read
them with the functions below. Every map is computed from what the hooks saw and the
module's own submodules, so it is the map the model used.

- The authors' ``SpatialGate`` (Jongchan/attention-module, ``MODELS/cbam.py``) returns
  ``x * sigmoid(spatial(compress(x)))`` with the sigmoid applied as a function: no module
  ever outputs the map. A hook on its ``spatial`` child reads the logits; the gate's own
  hook then has its input ``x`` and hands over ``sigmoid(logits)`` and ``|sigmoid ⊗ x|``.
- timm's ``SpatialAttn`` (``gate(conv([mean_c; max_c]))``) and ``LightSpatialAttn``
  (``gate(conv(mean_c / 2 + max_c / 2))``): the map is recomputed from the hook's input.
- timm's ``CbamModule`` / ``LightCbamModule``: the channel gate, then the spatial gate on
  the channel-gated features; the map and weighted features are the spatial gate's, and
  the channel gate's weights ride along (``AttentionCapture.channels``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnviz.attention.hooks import Removable, on_output
from attnviz.attention.protocol import AttentionCapture, Sink
from attnviz.errors import AttnvizError


def attach_authors_spatial_gate(gate: nn.Module, sink: Sink) -> list[Removable]:
    """Hooks on the authors' ``SpatialGate``: its ``spatial`` child gives the logits, the gate
    itself its input; together one capture per forward call."""
    maps: list[Tensor] = []

    def on_spatial(_inputs: tuple[Tensor, ...], output: object) -> None:
        if not isinstance(output, Tensor):
            raise AttnvizError(
                f"{type(gate).__name__}: its 'spatial' child gave {type(output).__name__}, "
                "not a tensor"
            )
        # The sigmoid now, on a new tensor: the gate may go on to change the logits in place.
        maps.append(torch.sigmoid(output))

    def on_gate(inputs: tuple[Tensor, ...], _output: object) -> None:
        features = inputs[0]
        if not maps:
            raise AttnvizError(
                f"{type(gate).__name__}: its 'spatial' child did not run in this forward call"
            )
        weights = maps.pop()
        maps.clear()  # a call that failed half-way left nothing this one should read
        if weights.shape[1] != 1 or weights.shape[2:] != features.shape[2:]:
            raise AttnvizError(
                f"{type(gate).__name__}: 'spatial' gave {tuple(weights.shape)} for features "
                f"{tuple(features.shape)}; expected one channel of the same size"
            )
        sink(AttentionCapture.from_weighted(weights, weights * features))

    spatial: nn.Module = gate.spatial  # type: ignore[assignment]
    return [on_output(spatial, on_spatial), on_output(gate, on_gate)]


def timm_spatial_weights(spatial: nn.Module, x: Tensor) -> Tensor:
    """The map (N, 1, H, W) of timm's ``SpatialAttn`` / ``LightSpatialAttn`` for features ``x``."""
    from timm.layers.cbam import LightSpatialAttn

    avg, mx = x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    pooled = (
        0.5 * avg + 0.5 * mx
        if isinstance(spatial, LightSpatialAttn)
        else torch.cat([avg, mx], dim=1)
    )
    return spatial.gate(spatial.conv(pooled))  # type: ignore[operator]


def timm_channel_weights(channel: nn.Module, x: Tensor) -> Tensor:
    """The weights of timm's ``ChannelAttn`` / ``LightChannelAttn`` for features ``x``, (N, C)."""
    from timm.layers.cbam import LightChannelAttn

    def mlp(v: Tensor) -> Tensor:
        return channel.fc2(channel.act(channel.fc1(v)))  # type: ignore[operator]

    avg, mx = x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    if isinstance(channel, LightChannelAttn):
        # timm's light variant applies a plain sigmoid, not its gate layer.
        weights = torch.sigmoid(mlp(0.5 * avg + 0.5 * mx))
    else:
        weights = channel.gate(mlp(avg) + mlp(mx))  # type: ignore[operator]
    return weights.flatten(1)


def capture_timm_spatial(
    spatial: nn.Module, inputs: tuple[Tensor, ...], _output: object
) -> AttentionCapture:
    """The adapter's capture of timm's ``SpatialAttn`` / ``LightSpatialAttn``: the map M,
    recomputed from the layer's input F, and mean |M * F|."""
    features = inputs[0]
    weights = timm_spatial_weights(spatial, features)
    return AttentionCapture.from_weighted(weights, weights * features)


def capture_timm_cbam(
    cbam: nn.Module, inputs: tuple[Tensor, ...], _output: object
) -> AttentionCapture:
    """The adapter's capture of timm's ``CbamModule`` / ``LightCbamModule``: the spatial map of the
    channel-gated input F_c, mean |M * F_c|, and the channel weights (N, C)."""
    x = inputs[0]
    channels = timm_channel_weights(cbam.channel, x)  # type: ignore[arg-type]
    gated = x * channels[:, :, None, None]
    weights = timm_spatial_weights(cbam.spatial, gated)  # type: ignore[arg-type]
    spatial = AttentionCapture.from_weighted(weights, weights * gated)
    return AttentionCapture(spatial.weights, spatial.weighted, channels=channels.detach())
