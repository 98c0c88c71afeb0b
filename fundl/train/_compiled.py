"""The compiled functions of a training, made once per :class:`Program` and reused by every later call.

``jax.jit`` keeps its compiled programs on the jitted function object, so making new
jitted functions on every ``fit`` would compile again each time. Here they are kept in a
small cache whose key is the :class:`Program` itself: a frozen record of *everything*
they are made of (the population's step rule, the loss, the options that shape the step,
the layout on the devices, the abstract shapes of the train state and the data).
:func:`compiled_functions` reads nothing else, so the key cannot drift from what is
compiled: an option that changes the program changes the key.

The training calls take the whole training data, kept on the device(s) once, and an
index array: each call gathers its batches inside the compiled program, so nothing but
a few integers crosses from the host per call. Data too large for that is sent batch by
batch instead (``data=None``; the "indices" are then the batches themselves).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fundl._core import Loss
from fundl.distributed import Placement
from fundl.train._population import Members, OneRun
from fundl.train._retrace import TraceGuard
from fundl.train._structural import structural_key

_CACHE: OrderedDict[Program, Compiled] = OrderedDict()
_CACHE_SIZE = 8


def abstract(tree: Any) -> tuple:
    """A hashable description of a pytree's structure, shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((getattr(leaf, "shape", ()), str(getattr(leaf, "dtype", type(leaf)))) for leaf in leaves)


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """Everything the compiled functions of one training are made of; equal programs share them.

    Two programs are equal when their options and shapes are, and their population (the
    optimizer, a custom step) and loss compute the same thing: compared by
    :func:`~fundl.train._structural.structural_key`, so a rebuilt ``optax.sgd(0.1)`` or
    ``classification_loss(model)`` (of a rebuilt model too) finds the compiled programs again.

    Attributes:
      population: one run or a population, and its step rule (optimizer, custom step).
      loss: the loss; its ``evaluate`` is the compiled evaluation (``None``: nothing to evaluate).
      accumulate: micro-batches per update.
      placement: the devices and the layout of the train state and batches.
      resident: the training data lives on the device(s) and calls take indices.
      fused: steps per fused call (each new count would be a new trace).
      strict: a recompilation raises instead of warning.
      eval_shapes: how many batch shapes evaluation is expected to compile for.
      carry, batch, eval_data: abstract shapes of the train state, a training batch, the evaluation splits.
    """

    population: OneRun | Members
    loss: Loss
    accumulate: int
    placement: Placement
    resident: bool
    fused: int
    strict: bool
    eval_shapes: int
    carry: tuple
    batch: tuple
    eval_data: tuple

    def __post_init__(self) -> None:
        fields = [getattr(self, f.name) for f in dataclasses.fields(self)]
        key = (structural_key(self.population), structural_key(self.loss), *fields[2:])
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_hash", hash(key))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Program) and self._hash == other._hash and self._key == other._key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]


class Compiled(NamedTuple):
    """``single(carry, data, indices)``, ``fused(...)`` over stacked indices, ``evaluate(params, state, batch)``."""

    single: Callable
    fused: Callable
    evaluate: Callable | None
    guards: dict[str, TraceGuard]


def _gather(data: Any, indices: Any) -> Any:
    return indices if data is None else jax.tree.map(lambda a: a[indices], data)


def _one_member_at_a_time(population: Members, program: Program, guard: TraceGuard, layout: dict[str, Any]) -> Callable:
    """A population's single step as one compiled call per member, each updating its slice of the carry in place
    (the carry is donated): for models whose vmapped step is slower than each member's own."""
    step_one = population.step_one(program.loss, program.accumulate)

    def member_call(carry, data, indices, i):
        return step_one(carry, _gather(data, indices), i)

    call = jax.jit(guard.wrap(member_call), donate_argnums=0, **layout)
    members = [np.int32(i) for i in range(population.size)]

    def single(carry: Any, data: Any, indices: Any) -> tuple[Any, Any]:
        outputs = []
        for i in members:
            carry, output = call(carry, data, indices, i)
            outputs.append(output)
        return carry, jax.tree.map(lambda *values: jnp.stack(values, axis=-1), *outputs)

    return single


def compiled_functions(program: Program, carry_like: Any) -> Compiled:
    """The cached compiled functions of ``program`` (made on a miss; ``carry_like`` gives the layout's shapes)."""
    if program in _CACHE:
        _CACHE.move_to_end(program)
        return _CACHE[program]
    strict = program.strict
    guards = {
        "train_step": TraceGuard("train_step", ("train_state", "data", "batch", "member"), strict=strict),
        "fused_steps": TraceGuard("fused_steps", ("train_state", "data", "batches"), strict=strict),
        "eval_step": TraceGuard("eval_step", ("params", "state", "batch"), program.eval_shapes, strict),
    }
    train_step = program.population.step(program.loss, program.accumulate)

    def single(carry, data, indices):
        return train_step(carry, _gather(data, indices))

    def fused(carry, data, indices):
        return lax.scan(lambda state, step_indices: train_step(state, _gather(data, step_indices)), carry, indices)

    placement = program.placement
    state_shardings = placement.state_shardings(carry_like)
    # On a mesh, the train state keeps its layout and metrics come back replicated.
    layout: dict[str, Any] = (
        {} if state_shardings is None else {"out_shardings": (state_shardings, placement.replicated)}
    )
    evaluate = program.loss.evaluate
    eval_layout: dict[str, Any] = {"out_shardings": placement.replicated} if placement.sharded else {}
    population = program.population
    if isinstance(population, Members) and not population.vectorized:
        single_call = _one_member_at_a_time(population, program, guards["train_step"], layout)
    else:
        single_call = jax.jit(guards["train_step"].wrap(single), donate_argnums=0, **layout)
    compiled = Compiled(
        single_call,
        jax.jit(guards["fused_steps"].wrap(fused), donate_argnums=0, **layout),
        jax.jit(guards["eval_step"].wrap(program.population.eval_fn(evaluate)), **eval_layout) if evaluate else None,
        guards,
    )
    _CACHE[program] = compiled
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled
