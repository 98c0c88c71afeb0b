"""fundl: functional deep learning in JAX.

A model is a pure function over a parameter pytree. A layer is an ``(init, apply)`` pair
(the vocabulary is :mod:`fundl._core`); combinators build models from layers; losses are
pure functions; one training loop (:mod:`fundl.train`) trains every model.

Example:
  >>> import fundl as fl
  >>> model = fl.serial(fl.dense(100), fl.tanh(), fl.dense(10))
  >>> out_shape, params, state = model.init(jax.random.key(0), (32, 64))
  >>> logits, state = model.apply(params, state, x)

Every name is imported on first use (``fl.dense``, ``fl.train.fit``), so ``import fundl``
starts no JAX and the command line answers at once.
"""

from typing import TYPE_CHECKING

from fundl._lazy import exports as _exports

__version__ = "0.1.0"

# The table of contents: each name's module is imported on first use (see fundl._lazy).
if TYPE_CHECKING:
    # The subpackages and modules.
    from fundl import (
        datasets as datasets,
        distributed as distributed,
        losses as losses,
        metrics as metrics,
        models as models,
        plots as plots,
        runs as runs,
        train as train,
    )

    # Building models.
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
    from fundl._summary import summary as summary
    from fundl.layers import (
        avg_pool as avg_pool,
        batch_norm as batch_norm,
        bidirectional as bidirectional,
        conv1d as conv1d,
        conv2d as conv2d,
        conv2d_transpose as conv2d_transpose,
        dense as dense,
        dropout as dropout,
        elu as elu,
        embedding as embedding,
        feed_forward as feed_forward,
        flatten as flatten,
        from_flax as from_flax,
        gelu as gelu,
        global_avg_pool as global_avg_pool,
        gru as gru,
        identity as identity,
        init_cache as init_cache,
        layer_norm as layer_norm,
        leaky_relu as leaky_relu,
        learned_positions as learned_positions,
        log_softmax as log_softmax,
        lstm as lstm,
        max_pool as max_pool,
        multi_head_attention as multi_head_attention,
        relu as relu,
        reshape as reshape,
        rms_norm as rms_norm,
        rotary_embedding as rotary_embedding,
        sigmoid as sigmoid,
        silu as silu,
        simple_rnn as simple_rnn,
        sinusoidal_positions as sinusoidal_positions,
        sinusoids as sinusoids,
        softmax as softmax,
        softplus as softplus,
        tanh as tanh,
        transformer as transformer,
        transformer_block as transformer_block,
    )

__getattr__, __dir__, __all__ = _exports(__name__, __file__)
