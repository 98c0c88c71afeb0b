"""fundl: functional deep learning in JAX.

A model is a pure function over a parameter pytree. A layer is an ``(init, apply)`` pair
(the vocabulary is :mod:`fundl._core`); combinators build models from layers; losses are
pure functions; one training loop (:mod:`fundl.train`) trains every model.

Example:
  >>> import fundl as fl
  >>> model = fl.serial(fl.dense(100), fl.tanh(), fl.dense(10))
  >>> out_shape, params, state = model.init(jax.random.key(0), (32, 64))
  >>> logits, state = model.apply(params, state, x)

The subpackages ``fl.train``, ``fl.models``, ``fl.runs``, ``fl.distributed`` and
``fl.plots`` are imported on first use.
"""

# The vocabulary.
# Losses, data.
from fundl import datasets as datasets
from fundl import losses as losses

# Building models.
from fundl._combinators import (
    branch as branch,
)
from fundl._combinators import (
    fan_in_concat as fan_in_concat,
)
from fundl._combinators import (
    fan_in_sum as fan_in_sum,
)
from fundl._combinators import (
    fan_out as fan_out,
)
from fundl._combinators import (
    named as named,
)
from fundl._combinators import (
    parallel as parallel,
)
from fundl._combinators import (
    residual as residual,
)
from fundl._combinators import (
    serial as serial,
)
from fundl._core import (
    ApplyFn as ApplyFn,
)
from fundl._core import (
    InitFn as InitFn,
)
from fundl._core import (
    Initializer as Initializer,
)
from fundl._core import (
    Key as Key,
)
from fundl._core import (
    Layer as Layer,
)
from fundl._core import (
    LayerError as LayerError,
)
from fundl._core import (
    LayerTypeError as LayerTypeError,
)
from fundl._core import (
    Params as Params,
)
from fundl._core import (
    Shape as Shape,
)
from fundl._core import (
    State as State,
)
from fundl._summary import summary as summary
from fundl.layers import (
    avg_pool as avg_pool,
)
from fundl.layers import (
    batch_norm as batch_norm,
)
from fundl.layers import (
    bidirectional as bidirectional,
)
from fundl.layers import (
    conv1d as conv1d,
)
from fundl.layers import (
    conv2d as conv2d,
)
from fundl.layers import (
    conv2d_transpose as conv2d_transpose,
)
from fundl.layers import (
    dense as dense,
)
from fundl.layers import (
    dropout as dropout,
)
from fundl.layers import (
    elu as elu,
)
from fundl.layers import (
    embedding as embedding,
)
from fundl.layers import (
    feed_forward as feed_forward,
)
from fundl.layers import (
    flatten as flatten,
)
from fundl.layers import (
    from_flax as from_flax,
)
from fundl.layers import (
    gelu as gelu,
)
from fundl.layers import (
    global_avg_pool as global_avg_pool,
)
from fundl.layers import (
    gru as gru,
)
from fundl.layers import (
    identity as identity,
)
from fundl.layers import (
    init_cache as init_cache,
)
from fundl.layers import (
    layer_norm as layer_norm,
)
from fundl.layers import (
    leaky_relu as leaky_relu,
)
from fundl.layers import (
    learned_positions as learned_positions,
)
from fundl.layers import (
    log_softmax as log_softmax,
)
from fundl.layers import (
    lstm as lstm,
)
from fundl.layers import (
    max_pool as max_pool,
)
from fundl.layers import (
    multi_head_attention as multi_head_attention,
)
from fundl.layers import (
    relu as relu,
)
from fundl.layers import (
    reshape as reshape,
)
from fundl.layers import (
    rms_norm as rms_norm,
)
from fundl.layers import (
    rotary_embedding as rotary_embedding,
)
from fundl.layers import (
    sigmoid as sigmoid,
)
from fundl.layers import (
    silu as silu,
)
from fundl.layers import (
    simple_rnn as simple_rnn,
)
from fundl.layers import (
    sinusoidal_positions as sinusoidal_positions,
)
from fundl.layers import (
    sinusoids as sinusoids,
)
from fundl.layers import (
    softmax as softmax,
)
from fundl.layers import (
    softplus as softplus,
)
from fundl.layers import (
    tanh as tanh,
)
from fundl.layers import (
    transformer as transformer,
)
from fundl.layers import (
    transformer_block as transformer_block,
)

__version__ = "0.1.0"

# Imported on first use (``fl.train.fit``), so that ``import fundl`` stays fast.
_LAZY_SUBMODULES = ("distributed", "models", "plots", "runs", "train")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"fundl.{name}")
    raise AttributeError(f"module 'fundl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})
