"""Layers: factories that return ``(init, apply)`` pairs, one family per module.

All of them are re-exported from :mod:`fundl`, so ``fundl.dense`` is ``fundl.layers.dense``.
"""

from fundl.layers._activations import (
    elu as elu,
)
from fundl.layers._activations import (
    gelu as gelu,
)
from fundl.layers._activations import (
    identity as identity,
)
from fundl.layers._activations import (
    leaky_relu as leaky_relu,
)
from fundl.layers._activations import (
    log_softmax as log_softmax,
)
from fundl.layers._activations import (
    relu as relu,
)
from fundl.layers._activations import (
    sigmoid as sigmoid,
)
from fundl.layers._activations import (
    silu as silu,
)
from fundl.layers._activations import (
    softmax as softmax,
)
from fundl.layers._activations import (
    softplus as softplus,
)
from fundl.layers._activations import (
    tanh as tanh,
)
from fundl.layers._attention import multi_head_attention as multi_head_attention
from fundl.layers._conv import conv1d as conv1d
from fundl.layers._conv import conv2d as conv2d
from fundl.layers._conv import conv2d_transpose as conv2d_transpose
from fundl.layers._decoding import init_cache as init_cache
from fundl.layers._dense import dense as dense
from fundl.layers._dense import embedding as embedding
from fundl.layers._dropout import dropout as dropout
from fundl.layers._flax import from_flax as from_flax
from fundl.layers._norm import batch_norm as batch_norm
from fundl.layers._norm import layer_norm as layer_norm
from fundl.layers._norm import rms_norm as rms_norm
from fundl.layers._pool import avg_pool as avg_pool
from fundl.layers._pool import global_avg_pool as global_avg_pool
from fundl.layers._pool import max_pool as max_pool
from fundl.layers._positions import learned_positions as learned_positions
from fundl.layers._positions import rotary_embedding as rotary_embedding
from fundl.layers._positions import sinusoidal_positions as sinusoidal_positions
from fundl.layers._positions import sinusoids as sinusoids
from fundl.layers._recurrent import bidirectional as bidirectional
from fundl.layers._recurrent import gru as gru
from fundl.layers._recurrent import lstm as lstm
from fundl.layers._recurrent import simple_rnn as simple_rnn
from fundl.layers._reshape import flatten as flatten
from fundl.layers._reshape import reshape as reshape
from fundl.layers._transformer import feed_forward as feed_forward
from fundl.layers._transformer import transformer as transformer
from fundl.layers._transformer import transformer_block as transformer_block
