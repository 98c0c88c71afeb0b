"""Training: the pure train step and the one loop, ``fit``, that trains every fundl model.

Example:
  >>> optimizer = optax.sgd(0.1)
  >>> train_state = TrainState.create(params, state, optimizer, jax.random.key(1))
  >>> train_state, history = fit(classification_loss(model), optimizer, train_state,
  ...                            data["train"], batch_size=32, epochs=15, eval_data={"test": data["test"]})
"""

from fundl.train._hooks import (
    BestParams as BestParams,
    EarlyStopping as EarlyStopping,
    Event as Event,
    Hook as Hook,
    derived_metric as derived_metric,
    early_stopping as early_stopping,
    log_learning_rate as log_learning_rate,
    stop_on_nonfinite as stop_on_nonfinite,
)
from fundl.train._members import fit_members as fit_members
from fundl.train._loop import Checkpointer as Checkpointer, check_options as check_options, fit as fit
from fundl.train._precision import POLICIES as PRECISION_POLICIES, with_precision as with_precision
from fundl.train._retrace import RetraceError as RetraceError, RetraceWarning as RetraceWarning
from fundl.train._shard_map import shard_map_step as shard_map_step
from fundl.train._state import TrainState as TrainState, params_fingerprint as params_fingerprint
from fundl.train._step import EvalFn as EvalFn, LossFn as LossFn, train_step_fn as train_step_fn
from fundl.train._tasks import classification_loss as classification_loss
from fundl.train._evaluate import evaluate as evaluate, history_arrays as history_arrays, predict as predict
from fundl.train._checks import check_finite as check_finite, check_opt_state as check_opt_state, check_params as check_params
