"""Neural network modules of stcvq: the Stage I 3D VQGAN, the Stage II model and the losses.

One module per idea: ``blocks`` (res blocks, resampling, attention), ``autoencoder``
(3D encoder/decoder, pad/crop), ``quantize`` (codebooks, STE, MPR/PDR), ``temporal`` (TA,
motion residual, fusion), ``vqgan`` (Stage1Config, Stage1Model), ``lookup`` (Stage II's code
lookup transformers), ``restorer`` (Stage2Config and its profiles, Stage2Model), ``discriminator``
(frozen DINOv2/CLIP + heads), ``losses`` (L1, VGG19 perceptual).
"""

from .quantize import VectorQuantizer, codebook_stats
from .temporal import Fusion, TemporalAttention, TemporalLatent, temporal_residual
from .vqgan import Stage1Config, Stage1Model, Stage1Output, Stage1Quantized

__all__ = [
    "Fusion",
    "Stage1Config",
    "Stage1Model",
    "Stage1Output",
    "Stage1Quantized",
    "TemporalAttention",
    "TemporalLatent",
    "VectorQuantizer",
    "codebook_stats",
    "temporal_residual",
]
