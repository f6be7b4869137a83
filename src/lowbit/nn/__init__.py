"""Quantized layers: drop-ins for ``torch.nn`` modules that hold real-valued latent weights and quantize
weights, inputs and gradients on the way through.

    layers      QuantLinear, QuantConv2d, QuantAct, PixelScale
    norm        shift-based batch norm (ShiftBatchNorm1d/2d), batch-norm recalibration
    bitplane    the bit-plane first layer (8-bit inputs x binary weights as 8 binary products)
    recurrent   QuantLSTM, QuantGRU, QuantRNN (match torch.nn.LSTM/GRU/RNN at full precision), QuantEmbedding
"""
from .layers import PixelScale, QuantAct, QuantConv2d, QuantLinear  # noqa: F401
from .norm import ShiftBatchNorm1d, ShiftBatchNorm2d, recalibrate_batch_norm  # noqa: F401
from .recurrent import QuantEmbedding, QuantGRU, QuantLSTM, QuantRNN  # noqa: F401
