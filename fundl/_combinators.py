"""Combinators: build bigger layers out of smaller ones.

Children are named by kind and number (``dense_0``, ``tanh_0``, ``dense_1``) unless
:func:`named` gives them a name, and their params and state are stored under that name
(children without params or state are left out). Each child's init key is the parent key
folded with a hash of the child's name, so two same-shaped layers never share weights and
adding a layer does not change the weights of the others.
"""

from __future__ import annotations

import contextlib
import contextvars
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp

from fundl._core import Key, Layer, LayerError, Params, Shape, State, num_elements, stateless


def named(name: str, layer: Layer) -> Layer:
    """Gives ``layer`` a fixed name inside its parent: its params live under ``params[name]``.

    Example:
      >>> model = serial(named("encoder", serial(dense(64), relu())), named("head", dense(10)))
      >>> # params["encoder"]["dense_0"]["w"], params["head"]["w"]
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise LayerError(f"named: the name must be a non-empty string without '/', got {name!r}")
    if not isinstance(layer, Layer):
        raise LayerError(f"named({name!r}, ...) expects a Layer, got {type(layer).__name__}")
    return layer._replace(name=name, fixed_name=True)


def _name_children(parent: str, layers: Sequence[Layer]) -> list[tuple[str, Layer]]:
    """Numbers each child by kind (``dense_0``, ``dense_1``) unless it has a fixed name."""
    if not layers:
        raise LayerError(f"{parent} needs at least one layer")
    counts: Counter[str] = Counter()
    children = []
    for position, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget to call it, e.g. relu() rather than relu?)" if callable(layer) else ""
            raise LayerError(f"{parent}: argument {position} is not a Layer but {layer!r}{hint}")
        if layer.fixed_name:
            name = layer.name
        else:
            name = f"{layer.name}_{counts[layer.name]}"
            counts[layer.name] += 1
        children.append((name, layer))
    names = [name for name, _ in children]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise LayerError(f"{parent}: two children share the name(s) {duplicates}; give them distinct names")
    return children


@overload
def child_key(key: Key, name: str) -> Key: ...
@overload
def child_key(key: None, name: str) -> None: ...
def child_key(key: Key | None, name: str) -> Key | None:
    """The key of child ``name``: ``fold_in(key, crc32(name))``, or None when ``key`` is None."""
    return None if key is None else jax.random.fold_in(key, zlib.crc32(name.encode()))


# --- recording of per-layer shapes, used by fundl.summary -------------------------------
_records: contextvars.ContextVar[list | None] = contextvars.ContextVar("fundl_records", default=None)
_path: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("fundl_path", default=())


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[tuple[str, ...], Shape, int]]]:
    """Collects ``(path, output_shape, num_params)`` for every child initialised inside."""
    rows: list = []
    token = _records.set(rows)
    try:
        yield rows
    finally:
        _records.reset(token)


def init_child(name: str, layer: Layer, key: Key, input_shape: Shape) -> tuple[Shape, Params, State]:
    """Initialises one child with its own key; errors and summary rows name its path."""
    rows = _records.get()
    token = _path.set((*_path.get(), name))
    row = len(rows) if rows is not None else None
    if rows is not None:
        rows.append(None)  # reserved, so that a parent is listed before its children
    try:
        shape, params, state = layer.init(child_key(key, name), input_shape)
    except LayerError as error:
        raise error.within(name)
    finally:
        _path.reset(token)
    if rows is not None and row is not None:
        rows[row] = ((*_path.get(), name), shape, num_elements(params))
    return shape, params, state


def apply_child(
    name: str, layer: Layer, params: Params, state: State, x: Any, key: Key | None, train: bool, **kwargs: Any
) -> tuple[Any, State]:
    """Applies one child to its slice of params and state; errors name its path.

    ``kwargs`` go to the child's ``apply`` (e.g. an attention layer's ``mask``).
    """
    try:
        return layer.apply(
            params.get(name, {}), state.get(name, {}), x, key=child_key(key, name), train=train, **kwargs
        )
    except LayerError as error:
        raise error.within(name)


def check_entries(kind: str, tree: Any, what: str, names: list[str]) -> None:
    """Raises LayerError if ``tree`` (params or state) has entries no child owns."""
    if not isinstance(tree, dict):
        raise LayerError(f"{kind} expects {what} to be a dict keyed by child name, got {type(tree).__name__}")
    extra = [key for key in tree if key not in names]
    if extra:
        raise LayerError(f"{kind} {what} have unexpected entries {extra}; its children are {names}")


def keep_nonempty(trees: dict[str, Any]) -> dict[str, Any]:
    """The entries with params (or state): children without any are left out of the trees."""
    return {name: tree for name, tree in trees.items() if tree}


def serial(*layers: Layer) -> Layer:
    """Chains layers: the output of each is the input of the next.

    Example:
      >>> model = serial(dense(100), tanh(), dense(10))   # params: dense_0, dense_1
    """
    children = _name_children("serial", layers)
    names = [name for name, _ in children]

    def init(key: Key, input_shape: Shape) -> tuple[Shape, Params, State]:
        shape, params, state = input_shape, {}, {}
        for name, layer in children:
            shape, params[name], state[name] = init_child(name, layer, key, shape)
        return shape, keep_nonempty(params), keep_nonempty(state)

    def apply(params, state, x, *, key=None, train=False):
        check_entries("serial", params, "params", names)
        check_entries("serial", state, "state", names)
        new_state = {}
        for name, layer in children:
            x, new_state[name] = apply_child(name, layer, params, state, x, key, train)
        return x, keep_nonempty(new_state)

    return Layer(init, apply, "serial")


def _side_by_side(kind: str, layers: Sequence[Layer], split_input: bool) -> Layer:
    """Applies each layer to its own input (``split_input``) or all to the same one."""
    children = _name_children(kind, layers)
    names = [name for name, _ in children]

    def inputs_for(x: Any, is_input: Callable[[Any], bool], describe: Callable[[Any], Any]) -> Sequence[Any]:
        if not split_input:
            return [x] * len(children)
        if not isinstance(x, (tuple, list)) or len(x) != len(children) or not all(map(is_input, x)):
            raise LayerError(f"{kind} expects a tuple of {len(children)} inputs, one per layer, got {describe(x)}")
        return x

    def init(key, input_shape):
        shapes, params, state = [], {}, {}
        for (name, layer), shape in zip(
            children, inputs_for(input_shape, lambda s: isinstance(s, (tuple, list)), tuple)
        ):
            out, params[name], state[name] = init_child(name, layer, key, shape)
            shapes.append(out)
        return tuple(shapes), keep_nonempty(params), keep_nonempty(state)

    def apply(params, state, x, *, key=None, train=False):
        check_entries(kind, params, "params", names)
        check_entries(kind, state, "state", names)
        ys, new_state = [], {}
        for (name, layer), xi in zip(
            children, inputs_for(x, lambda v: not isinstance(v, (tuple, list)), lambda v: jax.tree.map(jnp.shape, v))
        ):
            y, new_state[name] = apply_child(name, layer, params, state, xi, key, train)
            ys.append(y)
        return tuple(ys), keep_nonempty(new_state)

    return Layer(init, apply, kind)


def parallel(*layers: Layer) -> Layer:
    """Applies the i-th layer to the i-th element of a tuple input; returns the tuple of outputs."""
    return _side_by_side("parallel", layers, split_input=True)


def branch(*layers: Layer) -> Layer:
    """Applies every layer to the same input; returns the tuple of their outputs.

    Example: the two heads of a VAE encoder,
      >>> heads = branch(named("mean", dense(2)), named("log_var", dense(2)))
    """
    return _side_by_side("branch", layers, split_input=False)


def residual(*layers: Layer) -> Layer:
    """``x + serial(*layers)(x)``: a skip connection around layers that keep the shape.

    The params of the wrapped layers are stored directly under the residual's name.
    """
    inner = serial(*layers)

    def init(key, input_shape):
        shape, params, state = inner.init(key, input_shape)
        if tuple(shape) != tuple(input_shape):
            raise LayerError(
                f"residual: the wrapped layers map inputs {tuple(input_shape)} to {tuple(shape)}; "
                "a skip connection needs them to keep the shape"
            )
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        y, new_state = inner.apply(params, state, x, key=key, train=train)
        return x + y, new_state

    return Layer(init, apply, "residual")


def fan_out(n: int) -> Layer:
    """Copies its input into a tuple of ``n`` (to feed :func:`parallel`)."""
    if not isinstance(n, int) or n < 1:
        raise LayerError(f"fan_out: `n` must be a positive integer, got {n!r}")
    return stateless("fan_out", lambda x: (x,) * n, lambda shape: (shape,) * n)


def _check_tuple_of_shapes(kind: str, shapes: Shape) -> None:
    if not isinstance(shapes, (tuple, list)) or not all(isinstance(s, (tuple, list)) for s in shapes):
        raise LayerError(f"{kind} expects a tuple of inputs, got a single input of shape {shapes}")


def fan_in_sum() -> Layer:
    """Sums a tuple of same-shaped inputs."""

    def shape_fn(shapes):
        _check_tuple_of_shapes("fan_in_sum", shapes)
        if len({tuple(s) for s in shapes}) != 1:
            raise LayerError(f"fan_in_sum expects inputs of one shape, got {[tuple(s) for s in shapes]}")
        return tuple(shapes[0])

    return stateless("fan_in_sum", lambda xs: sum(xs[1:], xs[0]), shape_fn)


def fan_in_concat(axis: int = -1) -> Layer:
    """Concatenates a tuple of inputs along ``axis`` (default: the feature axis)."""

    def shape_fn(shapes):
        _check_tuple_of_shapes("fan_in_concat", shapes)
        rank = len(shapes[0])
        ax = axis % rank
        rest = {tuple(d for i, d in enumerate(s) if i != ax) for s in shapes}
        if any(len(s) != rank for s in shapes) or len(rest) != 1:
            raise LayerError(
                f"fan_in_concat(axis={axis}) expects inputs equal in every other axis, got {[tuple(s) for s in shapes]}"
            )
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out)

    return stateless("fan_in_concat", lambda xs: jnp.concatenate(xs, axis=axis), shape_fn)
