"""fundl: functional deep learning in JAX.

A model is a pure function over a parameter pytree. A layer is an ``(init, apply)`` pair
(see :mod:`fundl._core`); combinators build models from layers.
"""

from fundl._core import (
    ApplyFn as ApplyFn,
    InitFn as InitFn,
    Initializer as Initializer,
    Key as Key,
    Layer as Layer,
    LayerError as LayerError,
    LayerTypeError as LayerTypeError,
    Params as Params,
    Shape as Shape,
    State as State,
)
from fundl._combinators import (
    branch as branch,
    fan_in_concat as fan_in_concat,
    fan_in_sum as fan_in_sum,
    fan_out as fan_out,
    named as named,
    parallel as parallel,
    residual as residual,
    serial as serial,
)
from fundl._dense import dense as dense, embedding as embedding
from fundl._activations import (
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
from fundl._reshape import flatten as flatten, reshape as reshape
from fundl._dropout import dropout as dropout
from fundl._norm import batch_norm as batch_norm, layer_norm as layer_norm
from fundl._flax import from_flax as from_flax
from fundl._summary import summary as summary
from fundl import datasets as datasets, losses as losses

__version__ = "0.1.0"
