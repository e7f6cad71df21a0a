"""Layers shared by the model families."""

from sensorium.nn.attention import SelfAttention
from sensorium.nn.layers import LayerScale, Mlp, TransformerBlock
from sensorium.nn.rope import apply_rope_pairs, rope_2d_angles, rope_tables

__all__ = ["SelfAttention", "LayerScale", "Mlp", "TransformerBlock", "apply_rope_pairs", "rope_2d_angles", "rope_tables"]
