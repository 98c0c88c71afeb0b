"""Checks of what ``fit``, ``fit_members`` and ``predict`` are handed, where a habit from elsewhere would give a
Python ``AttributeError`` or an unrelated message: each error says what was passed, what was expected and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fundl._core import Layer, Loss
from fundl.train._state import TrainState

_NOT_A_TRAIN_STATE = (
    "{where} takes a TrainState (step, params, state, optimizer state and key), got {got}{looks}: make one with "
    "TrainState.create(params, state, optimizer, key=jax.random.key(1)), or pass the train state fit returned"
)
_SPLITS = (
    "eval_data names its splits: a dict like eval_data={{'validation': (x_val, y_val)}} (each split in the form "
    "of the training data), got {got}"
)
_NOT_A_MODEL = (
    "predict takes the model, an (init, apply) Layer such as fl.serial(...), got {got}: predict(model, params, "
    "state, x){fix}"
)


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"


def check_train_state(value: Any, where: str = "fit's train_state") -> None:
    """Raises TypeError unless ``value`` is a :class:`TrainState`, naming what it looks like (params, a tuple)."""
    if isinstance(value, TrainState):
        return
    looks = ""
    if isinstance(value, Mapping):
        looks = " (it looks like the model's params)"
    elif isinstance(value, tuple) and len(value) == 2:
        looks = " (it looks like fit's (train_state, history): unpack it, train_state, history = fit(...))"
    raise TypeError(_NOT_A_TRAIN_STATE.format(where=where, got=_kind(value), looks=looks))


def eval_splits(eval_data: Any) -> dict[str, Any]:
    """``eval_data`` as named splits: a mapping; a bare split (``(x, y)``, one dict of arrays) is an error."""
    if eval_data is None:
        return {}
    if not isinstance(eval_data, Mapping):
        got = f"a {type(eval_data).__name__} of {len(eval_data)}" if isinstance(eval_data, (tuple, list)) else None
        raise TypeError(_SPLITS.format(got=got or _kind(eval_data)))
    named = [name for name in eval_data if not isinstance(name, str)]
    if named:
        raise TypeError(_SPLITS.format(got=f"a dict whose keys are not split names: {named[:3]}"))
    return dict(eval_data)


def check_model(model: Any) -> None:
    """Raises TypeError unless ``model`` is an ``(init, apply)`` :class:`Layer` (a loss is a common mistake)."""
    if isinstance(model, Layer) or (hasattr(model, "apply") and hasattr(model, "init")):
        return
    fix = (
        "; for the loss and metrics over data use evaluate(loss, params, state, data)"
        if isinstance(model, Loss)
        else ""
    )
    raise TypeError(_NOT_A_MODEL.format(got=_kind(model), fix=fix))
