"""The vocabulary of fundl: what a layer is, what it takes and what it returns.

A **layer** is a pair of pure functions, made by a factory such as ``dense(128)``::

    init(key, input_shape) -> (output_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)

``init`` infers the output shape from the input shape alone (no data) and builds the
layer's **params** (trainable arrays) and **state** (non-trainable arrays such as
batch-norm statistics), both plain nested dicts of ``jax.Array`` with readable names.
Layers without params or state return empty dicts, and combinators leave those out of
their trees. ``apply`` is pure: the randomness it needs comes in as ``key`` and the
state it updates goes out as ``new_state``. ``train`` is a runtime keyword.

Every user error a layer raises is a :class:`LayerError`; combinators prefix its message
with the path of the layer that raised it, e.g. ``encoder/dense_1: ...``.

A **loss** is a pure function ``loss_fn(params, state, batch, key) -> (loss, (new_state,
metrics))``; the training loop takes it as a :class:`Loss`, a small record that also
carries how to evaluate it and how to check a whole split of data before training.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array
Key = jax.Array
"""A JAX PRNG key, e.g. ``jax.random.key(0)``."""
Params = dict[str, Any]
"""Trainable arrays: nested dicts whose leaves are ``jax.Array``."""
State = dict[str, Any]
"""Non-trainable arrays updated by ``apply`` (batch-norm statistics): nested dicts."""
Shape = tuple[Any, ...]
"""An array shape ``(batch, ...)``, or a tuple of shapes for layers with several inputs."""
Initializer = Callable[..., Array]
Batch = Any
"""One batch of data, in whatever form the loss takes (a dict of arrays, a tuple ``(x, y)``)."""
Metrics = dict[str, Array]
LossFn = Callable[[Params, State, Batch, Key | None], tuple[Array, tuple[State, Metrics]]]
"""``loss_fn(params, state, batch, key) -> (loss, (new_state, metrics))``: a float scalar loss,
the model state after the batch and a dict of float scalar metrics."""
EvalFn = Callable[[Params, State, Batch], Metrics]
"""``eval_fn(params, state, batch) -> metrics``: the loss and metrics in evaluation mode."""
DataCheck = Callable[[Any, str], None]
"""``check_data(data, name)``: raises a ``ValueError`` naming ``name`` if a whole split cannot be trained on."""


class NamedInitializer:
    """A ``jax.nn.initializers`` function that prints as the call that made it (for ``help()``)."""

    def __init__(self, name: str, init: Initializer):
        self.name, self.init = name, init

    def __call__(self, key: Any, shape: Any, dtype: Any = jnp.float32) -> Array:
        return self.init(key, shape, dtype)

    def __repr__(self) -> str:
        return f"initializers.{self.name}"


# The layers' defaults, by name: help(fl.dense) shows w_init=initializers.glorot_uniform().
GLOROT_UNIFORM = NamedInitializer("glorot_uniform()", jax.nn.initializers.glorot_uniform())
ORTHOGONAL = NamedInitializer("orthogonal()", jax.nn.initializers.orthogonal())
ZEROS = NamedInitializer("zeros", jax.nn.initializers.zeros)
STANDARD_NORMAL = NamedInitializer("normal(stddev=1.0)", jax.nn.initializers.normal(stddev=1.0))
SMALL_NORMAL = NamedInitializer("normal(stddev=0.02)", jax.nn.initializers.normal(stddev=0.02))
"""A ``jax.nn.initializers`` function: ``init(key, shape, dtype) -> Array``."""


class InitFn(Protocol):
    def __call__(self, key: Key, input_shape: Shape) -> tuple[Shape, Params, State]:
        """Builds params and state for inputs of ``input_shape``; returns the output shape too."""


class ApplyFn(Protocol):
    def __call__(
        self, params: Params, state: State, x: Any, *, key: Key | None = None, train: bool = False
    ) -> tuple[Any, State]:
        """Computes the layer's output and its new state."""


class Layer(NamedTuple):
    """An ``(init, apply)`` pair and the name it is known by inside a model.

    Attributes:
      init: builds ``(output_shape, params, state)`` from a key and an input shape.
      apply: computes ``(y, new_state)`` from params, state and an input.
      name: the kind of layer (``"dense"``); a combinator numbers it (``dense_0``)
        unless ``fixed_name`` is set by :func:`fundl.named`.
      fixed_name: use ``name`` as it is, without a number.

    Compiling ``apply``: ``train`` chooses between two programs (dropout on or off,
    batch statistics or running ones), so it must be a Python bool when ``apply`` is
    traced. Under a plain ``jax.jit(model.apply)`` it becomes a traced value and
    ``train=True`` fails with a tracer (``TracerBoolConversionError``) error; mark it
    static, and ``jit`` compiles once for each value of ``train``::

        apply = jax.jit(model.apply, static_argnames="train")
        logits, state = apply(params, state, x, key=key, train=True)   # training mode
        logits, _ = apply(params, state, x, train=False)               # evaluation mode

    (``fit``, ``evaluate`` and ``predict`` pass ``train`` as a constant inside their compiled
    functions, so they need nothing of this.)
    """

    init: InitFn
    apply: ApplyFn
    name: str = "layer"
    fixed_name: bool = False


class LayerError(ValueError):
    """A layer was given input, params or arguments it cannot use.

    The message says what was expected and what was received; ``path`` names the layer
    inside its model and grows as the error passes up through combinators.
    """

    def __init__(self, message: str, path: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.path = path

    def within(self, name: str) -> "LayerError":
        """Returns this error with ``name`` prepended to its path."""
        self.path = (name, *self.path)
        return self

    def __str__(self) -> str:
        where = "/".join(self.path)
        return f"{where}: {self.message}" if where else self.message


class LayerTypeError(LayerError, TypeError):
    """A layer was given an input of the wrong dtype."""


# ---------------------------------------------------------------------------------------
# Small checks shared by the layers. They run at init or trace time, never per step.


def _got(value: Any) -> str:
    """``3.0 (a float)``: a value and its type, for messages."""
    name = type(value).__name__
    return f"{value!r} ({'an' if name[0] in 'aeiou' else 'a'} {name})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive(kind: str, **values: Any) -> None:
    """Raises LayerError unless every value is an int > 0 (a count: units, features, hidden size)."""
    for arg, value in values.items():
        if not (_is_int(value) and value > 0):
            hint = ": give one integer" if isinstance(value, (tuple, list)) else ""
            raise LayerError(f"{kind}: `{arg}` must be a positive integer, got {_got(value)}{hint}")


def check_sizes(kind: str, **values: Any) -> None:
    """Raises LayerError unless every value is a tuple of ints > 0 (a shape, a window, widths per layer)."""
    for arg, value in values.items():
        if not (isinstance(value, tuple) and all(_is_int(v) and v > 0 for v in value)):
            raise LayerError(f"{kind}: `{arg}` must be a tuple of positive integers, got {_got(value)}")


def check_bool(kind: str, **values: Any) -> None:
    """Raises LayerError unless every value is ``True`` or ``False`` (a flag such as ``use_bias``)."""
    for arg, value in values.items():
        if not isinstance(value, bool):
            raise LayerError(f"{kind}: `{arg}` must be True or False, got {_got(value)}")


def check_axis(kind: str, **values: Any) -> None:
    """Raises LayerError unless every value is an int (an axis; negative counts from the end)."""
    for arg, value in values.items():
        if not _is_int(value):
            raise LayerError(f"{kind}: `{arg}` must be an integer axis (e.g. -1 for the last), got {_got(value)}")


def check_initializer(kind: str, **values: Any) -> None:
    """Raises LayerError unless every value is an initializer ``init(key, shape, dtype) -> array``."""
    for arg, value in values.items():
        if not callable(value):
            raise LayerError(
                f"{kind}: `{arg}` must be an initializer init(key, shape, dtype), e.g. "
                f"jax.nn.initializers.glorot_uniform(), got {_got(value)}"
            )


def check_number(
    kind: str,
    arg: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    what: str = "a number",
) -> None:
    """Raises LayerError unless ``value`` is a finite real number in ``[low, high)`` (the bounds given), and
    above 0 if ``positive``; ``what`` says it in words ("in [0, 1)")."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if (
        not real
        or (low is not None and value < low)
        or (high is not None and value >= high)
        or (positive and value <= 0)
    ):
        raise LayerError(f"{kind}: `{arg}` must be {what}, got {_got(value)}")


def check_rank(kind: str, shape: Shape, rank: int, layout: str, hint: str = "") -> None:
    """Raises LayerError unless ``shape`` has exactly ``rank`` dimensions."""
    if len(shape) != rank:
        fix = f": {hint}" if hint else ""
        raise LayerError(f"{kind} expects inputs of shape {layout} (rank {rank}), got {tuple(shape)}{fix}")


def check_float(kind: str, x: Any) -> None:
    """Raises LayerTypeError unless ``x`` is a floating-point array."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise LayerTypeError(
            f"{kind} expects floating-point inputs, got {dtype}: cast with x.astype(jnp.float32)"
            + (", or use embedding() for integer token ids" if jnp.issubdtype(dtype, jnp.integer) else "")
        )


def expect_params(kind: str, params: Params, expected: dict[str, tuple[int, ...]]) -> list[Array]:
    """Returns ``params``' arrays in the order of ``expected`` after checking names and shapes.

    Raises LayerError naming the missing, unexpected or wrong-shaped entry.
    """
    if not isinstance(params, dict):
        raise LayerError(f"{kind} expects params to be a dict with {sorted(expected)}, got {type(params).__name__}")
    missing = [name for name in expected if name not in params]
    extra = [name for name in params if name not in expected]
    if missing or extra:
        raise LayerError(
            f"{kind} params do not match the layer: expected entries {sorted(expected)}, "
            f"missing {missing}, unexpected {extra}"
        )
    arrays = []
    for name, shape in expected.items():
        got = tuple(jnp.shape(params[name]))
        if got != tuple(shape):
            raise LayerError(f"{kind} param '{name}' should have shape {tuple(shape)}, got {got}")
        arrays.append(params[name])
    return arrays


def stateless(name: str, fn: Callable[[Any], Any], shape_fn: Callable[[Shape], Shape]) -> Layer:
    """A layer without params or state that computes ``fn(x)``; ``shape_fn`` gives its output shape."""

    def init(key: Key, input_shape: Shape) -> tuple[Shape, Params, State]:
        return shape_fn(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(init, apply, name)


def num_elements(tree: Any) -> int:
    """The number of scalars in a pytree of arrays (or of ShapeDtypeStructs)."""
    return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(tree))


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (eager call), False under a JAX transformation."""
    return not isinstance(x, jax.core.Tracer)


def check_indices(kind: str, x: Any, size: int, what: str, error: type[ValueError] = LayerError) -> None:
    """Raises ``error`` if concrete integer ``x`` has values outside ``[0, size)``.

    Under ``jit`` the values are unknown and nothing is checked.
    """
    if is_concrete(x) and jnp.size(x):
        low, high = int(jnp.min(x)), int(jnp.max(x))
        if low < 0 or high >= size:
            raise error(f"{kind}: {what} must lie in [0, {size}), got values from {low} to {high}")


# ---------------------------------------------------------------------------------------
# The loss as a value.


@dataclasses.dataclass(frozen=True)
class EvalMode:
    """A loss function that takes a ``train`` keyword, called in evaluation mode: an :data:`EvalFn`.

    ``eval_fn(params, state, batch)`` is ``{"loss": loss, **metrics}`` of
    ``loss_fn(params, state, batch, None, train=False)``. Two of them are equal when their
    loss functions are, so a rebuilt :class:`Loss` finds its compiled programs again.
    """

    loss_fn: Callable[..., Any]

    def __call__(self, params: Params, state: State, batch: Batch) -> Metrics:
        loss, (_, metrics) = self.loss_fn(params, state, batch, None, train=False)
        return {"loss": loss, **metrics}


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss function and what the training loop asks of it besides its value.

    Attributes:
      fn: ``(params, state, batch, key) -> (loss, (new_state, metrics))``, in training mode.
      evaluate: ``(params, state, batch) -> metrics``, how a split is evaluated; ``None``
        if it cannot be (then only training metrics are reported).
      check_data: ``(data, name) -> None``, checks a whole split once on the host before
        training (labels within the classes, finite inputs); ``None``: finite float
        inputs only.

    A ``Loss`` is called like its ``fn``, so it can stand wherever a loss function does
    (``jax.jit(loss)`` and ``jax.grad(loss)`` included). Wrappers such as
    :func:`fundl.train.with_precision` return a new ``Loss`` with each part wrapped, so
    nothing is lost on the way. Two losses are equal when their parts are.

    Example:
      >>> loss = Loss.of(loss_fn)                           # evaluate: loss_fn(..., train=False) if it takes `train`
      >>> loss = Loss(loss_fn, evaluate=my_eval_fn)        # or say how to evaluate
    """

    fn: LossFn
    evaluate: EvalFn | None = None
    check_data: DataCheck | None = None

    def __call__(self, params: Params, state: State, batch: Batch, key: Key | None, /, **kwargs: Any) -> Any:
        return self.fn(params, state, batch, key, **kwargs)

    def check(self, data: Any, name: str) -> None:
        """Checks a split once on the host before training (all of it in memory; a source's first examples)."""
        from fundl._data import check_finite, is_source, sample

        (self.check_data or check_finite)(sample(data), f"{name} (its first examples)" if is_source(data) else name)

    @classmethod
    def of(cls, loss_fn: Any, eval_fn: EvalFn | None = None) -> "Loss":
        """``loss_fn`` as a :class:`Loss`; a plain function is read once, here, at the API's edge.

        A ``Loss`` comes back as it is (with ``eval_fn`` as its evaluation, if given). A plain
        function evaluates with ``eval_fn`` if given, else, if it declares a ``train``
        keyword, as ``loss_fn(params, state, batch, None, train=False)``; else it cannot evaluate.
        """
        if isinstance(loss_fn, Loss):
            return loss_fn if eval_fn is None else dataclasses.replace(loss_fn, evaluate=eval_fn)
        if isinstance(loss_fn, Layer) or not callable(loss_fn):
            what = "a model (an (init, apply) Layer)" if isinstance(loss_fn, Layer) else f"a {type(loss_fn).__name__}"
            raise TypeError(
                f"expected a loss function (params, state, batch, key) -> (loss, (new_state, metrics)), got {what}: "
                "build one from the model, e.g. fundl.losses.classification_loss(model)"
            )
        if eval_fn is None and _takes_train_keyword(loss_fn):
            eval_fn = EvalMode(loss_fn)
        return cls(loss_fn, eval_fn)


def _takes_train_keyword(fn: Callable[..., Any]) -> bool:
    try:
        return "train" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False
