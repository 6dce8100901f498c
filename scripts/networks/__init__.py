"""CoTr network modules."""

from .cotr import CoTr
from .decoder import CoTrDecoder, DecoderResBlock
from .detrans import DeTransEncoder, DeTransLayer, voxel_centre_reference_points
from .encoder import CNNEncoder, EncoderResBlock
from .ms_deform_attn import (
    MSDeformAttn3D,
    fibonacci_sphere,
    ms_deform_attn_3d,
    ms_deform_attn_3d_gather,
    ms_deform_attn_3d_grid_sample,
    use_grid_sample,
)
from .position_encoding import sine_position_encoding_3d

__all__ = [
    "CoTr",
    "CoTrDecoder",
    "DecoderResBlock",
    "DeTransEncoder",
    "DeTransLayer",
    "voxel_centre_reference_points",
    "CNNEncoder",
    "EncoderResBlock",
    "MSDeformAttn3D",
    "fibonacci_sphere",
    "ms_deform_attn_3d",
    "ms_deform_attn_3d_gather",
    "ms_deform_attn_3d_grid_sample",
    "use_grid_sample",
    "sine_position_encoding_3d",
]
