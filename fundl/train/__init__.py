"""Training: the pure train step and the one loop that trains every fundl model, one run or many.

Example:
  >>> optimizer = optax.sgd(0.1)
  >>> train_state = TrainState.create(params, state, optimizer, jax.random.key(1))
  >>> train_state, history = fit(classification_loss(model), optimizer, train_state,
  ...                            data["train"], batch_size=32, epochs=15, eval_data={"validation": data["validation"]})
"""

from typing import TYPE_CHECKING

from fundl._lazy import exports as _exports

# The table of contents: each name's module is imported on first use (see fundl._lazy).
if TYPE_CHECKING:
    from fundl._core import EvalFn as EvalFn, Loss as Loss, LossFn as LossFn
    from fundl._data import check_finite as check_finite
    from fundl.models._classification import classification_loss as classification_loss
    from fundl.train._checks import check_opt_state as check_opt_state, check_params as check_params
    from fundl.train._evaluate import (
        evaluate as evaluate,
        history_arrays as history_arrays,
        predict as predict,
        score as score,
    )
    from fundl.train._fit import fit as fit, fit_members as fit_members
    from fundl.train._history import History as History, MemberEnd as MemberEnd, Record as Record
    from fundl.train._hooks import (
        BestParams as BestParams,
        DerivedMetric as DerivedMetric,
        EarlyStopping as EarlyStopping,
        Event as Event,
        Hook as Hook,
        derived_metric as derived_metric,
        early_stopping as early_stopping,
        log_learning_rate as log_learning_rate,
        stop_on_nonfinite as stop_on_nonfinite,
    )
    from fundl.train._loggers import Logger as Logger, LoggerHook as LoggerHook, logger_hook as logger_hook
    from fundl.train._loop import loop as loop
    from fundl.train._options import (
        Budget as Budget,
        Callbacks as Callbacks,
        Checkpointer as Checkpointer,
        Evaluation as Evaluation,
        Execution as Execution,
        Input as Input,
    )
    from fundl.train._population import Members as Members, MemberStates as MemberStates, OneRun as OneRun
    from fundl.train._precision import PRECISION_POLICIES as PRECISION_POLICIES, with_precision as with_precision
    from fundl.train._retrace import RetraceError as RetraceError, RetraceWarning as RetraceWarning
    from fundl.train._shard_map import shard_map_step as shard_map_step
    from fundl.train._state import (
        TrainState as TrainState,
        initial_train_state as initial_train_state,
        initial_train_states as initial_train_states,
        params_fingerprint as params_fingerprint,
    )
    from fundl.train._step import train_step_fn as train_step_fn

__getattr__, __dir__, __all__ = _exports(__name__, __file__)
