"""Training: the pure train step and the one loop, ``fit``, that trains every fundl model.

Example:
  >>> optimizer = optax.sgd(0.1)
  >>> train_state = TrainState.create(params, state, optimizer, jax.random.key(1))
  >>> train_state, history = fit(classification_loss(model), optimizer, train_state,
  ...                            data["train"], batch_size=32, epochs=15, eval_data={"validation": data["validation"]})
"""

from fundl.train._checks import check_finite as check_finite
from fundl.train._checks import check_opt_state as check_opt_state
from fundl.train._checks import check_params as check_params
from fundl.train._evaluate import evaluate as evaluate
from fundl.train._evaluate import history_arrays as history_arrays
from fundl.train._evaluate import predict as predict
from fundl.train._hooks import (
    BestParams as BestParams,
)
from fundl.train._hooks import (
    EarlyStopping as EarlyStopping,
)
from fundl.train._hooks import (
    Event as Event,
)
from fundl.train._hooks import (
    Hook as Hook,
)
from fundl.train._hooks import (
    derived_metric as derived_metric,
)
from fundl.train._hooks import (
    early_stopping as early_stopping,
)
from fundl.train._hooks import (
    log_learning_rate as log_learning_rate,
)
from fundl.train._hooks import (
    stop_on_nonfinite as stop_on_nonfinite,
)
from fundl.train._loop import Checkpointer as Checkpointer
from fundl.train._loop import check_options as check_options
from fundl.train._loop import fit as fit
from fundl.train._members import fit_members as fit_members
from fundl.train._precision import PRECISION_POLICIES as PRECISION_POLICIES
from fundl.train._precision import with_precision as with_precision
from fundl.train._retrace import RetraceError as RetraceError
from fundl.train._retrace import RetraceWarning as RetraceWarning
from fundl.train._shard_map import shard_map_step as shard_map_step
from fundl.train._state import TrainState as TrainState
from fundl.train._state import params_fingerprint as params_fingerprint
from fundl.train._step import EvalFn as EvalFn
from fundl.train._step import LossFn as LossFn
from fundl.train._step import train_step_fn as train_step_fn
from fundl.train._tasks import classification_loss as classification_loss
