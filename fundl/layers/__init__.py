"""Layers: factories that return ``(init, apply)`` pairs, one family per module.

All of them are re-exported from :mod:`fundl`, so ``fundl.dense`` is ``fundl.layers.dense``.
"""

from fundl.layers._activations import (
    elu as elu,
    gelu as gelu,
    identity as identity,
    leaky_relu as leaky_relu,
    log_softmax as log_softmax,
    relu as relu,
    sigmoid as sigmoid,
    silu as silu,
    softmax as softmax,
    softplus as softplus,
    tanh as tanh,
)
from fundl.layers._attention import multi_head_attention as multi_head_attention
from fundl.layers._conv import conv1d as conv1d, conv2d as conv2d, conv2d_transpose as conv2d_transpose
from fundl.layers._decoding import init_cache as init_cache
from fundl.layers._dense import dense as dense, embedding as embedding
from fundl.layers._dropout import dropout as dropout
from fundl.layers._flax import from_flax as from_flax
from fundl.layers._norm import batch_norm as batch_norm, layer_norm as layer_norm, rms_norm as rms_norm
from fundl.layers._pool import avg_pool as avg_pool, global_avg_pool as global_avg_pool, max_pool as max_pool
from fundl.layers._positions import (
    learned_positions as learned_positions,
    rotary_embedding as rotary_embedding,
    sinusoidal_positions as sinusoidal_positions,
    sinusoids as sinusoids,
)
from fundl.layers._recurrent import bidirectional as bidirectional, gru as gru, lstm as lstm, simple_rnn as simple_rnn
from fundl.layers._reshape import flatten as flatten, reshape as reshape
from fundl.layers._transformer import (
    feed_forward as feed_forward,
    transformer as transformer,
    transformer_block as transformer_block,
)
