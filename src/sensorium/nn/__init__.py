"""Layers shared by the model families."""

from sensorium.nn.attention import SelfAttention
from sensorium.nn.conv import Conv1d, Conv2d
from sensorium.nn.linear import (Embedding, Linear, linear, pack_linears, prepare_for_decoding, stream_linears,
                                 unpack_linears, use_onednn)
from sensorium.nn.layers import LayerScale, Mlp, SwiGLU, TransformerBlock
from sensorium.nn.norms import RMSNorm
from sensorium.nn.rope import (Rope1D, RopeTables, apply_rope_halves, apply_rope_pairs, rope_1d_angles, rope_2d_angles,
                               rope_tables)

__all__ = [
    "Conv1d", "Conv2d", "Embedding", "Linear", "linear", "pack_linears", "prepare_for_decoding", "stream_linears",
    "unpack_linears", "use_onednn",
    "SelfAttention", "LayerScale", "Mlp", "SwiGLU", "TransformerBlock", "RMSNorm",
    "Rope1D", "RopeTables", "apply_rope_halves", "apply_rope_pairs", "rope_1d_angles", "rope_2d_angles", "rope_tables",
]
