"""Layers of Make-A-Video (Singer et al. 2022, section 3.2): pseudo-3D convolution and attention,
their positional embeddings, the learned temporal EMA (Mega) and the U-Net blocks built on them."""

from mavcli.nn.attention import Attention, SpatioTemporalAttention
from mavcli.nn.conv import Pseudo3DConv
from mavcli.nn.ema import LearnedTemporalEMA

__all__ = ["Attention", "LearnedTemporalEMA", "Pseudo3DConv", "SpatioTemporalAttention"]
