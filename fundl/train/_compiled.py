"""The compiled functions of ``fit``, made once and reused by every later call with the same pieces.

``jax.jit`` keeps its compiled programs on the jitted function object; ``fit`` used to make
new ones on every call, so each call compiled again. Here they are kept in a small cache
keyed by what they are made of (the loss, the optimizer or step, the evaluation function,
the layout on the devices, and the abstract shapes of the train state and the data), so
a notebook or a sweep that calls ``fit`` again with the same pieces compiles nothing.

The training calls take the whole training data, kept on the device(s) once, and an
index array: each call gathers its batches inside the compiled program, so nothing but
a few integers crosses from the host per call. Data too large for that is sent batch by
batch instead (``data=None``; the "indices" are then the batches themselves).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
from jax import lax

from fundl.train._retrace import TraceGuard

_CACHE: OrderedDict[Any, Compiled] = OrderedDict()
_CACHE_SIZE = 8


class Compiled(NamedTuple):
    """``single(train_state, data, indices)``, ``fused(...)`` over stacked indices, ``evaluate(params, state, batch)``."""

    single: Callable
    fused: Callable
    evaluate: Callable | None
    guards: dict[str, TraceGuard]


def _gather(data: Any, indices: Any) -> Any:
    return indices if data is None else jax.tree.map(lambda a: a[indices], data)


def abstract(tree: Any) -> tuple:
    """A hashable description of a pytree's structure, shapes, dtypes and shardings."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((getattr(leaf, "shape", ()), str(getattr(leaf, "dtype", type(leaf)))) for leaf in leaves)


def compiled_functions(
    key: tuple,
    train_step: Callable,
    eval_fn: Callable | None,
    *,
    state_shardings: Any,
    replicated: Any,
    eval_shapes: int,
    strict: bool,
) -> Compiled:
    """The cached compiled functions for ``key`` (made from ``train_step`` and ``eval_fn`` on a miss)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    guards = {
        "train_step": TraceGuard("train_step", ("train_state", "data", "batch"), strict=strict),
        "fused_steps": TraceGuard("fused_steps", ("train_state", "data", "batches"), strict=strict),
        "eval_step": TraceGuard("eval_step", ("params", "state", "batch"), eval_shapes, strict),
    }

    def single(train_state, data, indices):
        return train_step(train_state, _gather(data, indices))

    def fused(train_state, data, indices):
        return lax.scan(lambda state, step_indices: train_step(state, _gather(data, step_indices)), train_state, indices)

    # On a mesh, the train state keeps its layout and metrics come back replicated.
    layout: dict[str, Any] = {} if state_shardings is None else {"out_shardings": (state_shardings, replicated)}
    compiled = Compiled(
        jax.jit(guards["train_step"].wrap(single), donate_argnums=0, **layout),
        jax.jit(guards["fused_steps"].wrap(fused), donate_argnums=0, **layout),
        jax.jit(guards["eval_step"].wrap(eval_fn), **({} if replicated is None else {"out_shardings": replicated})) if eval_fn else None,
        guards,
    )
    _CACHE[key] = compiled
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled


def use_persistent_cache(directory: Path | str | None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory`` (``None``: leave it off).

    A later process that compiles the same program (a repeated run) loads it from there
    instead of compiling. Every program is cached, however quick its compilation.
    """
    if directory is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(directory)
