"""What the loop trains: one run, or a population of members trained as one compiled program.

Because a fundl model is a pure function of its params, ``M`` independent runs (seeds, or
optimizer settings) are one function of ``M`` stacked train states: ``jax.vmap`` of the
same training step. The loop (:mod:`fundl.train._loop`) is written once for both; what
differs is here, behind one small interface:

- :class:`OneRun`: the carry is the :class:`TrainState` itself, stepped as it is (no ``vmap``).
- :class:`Members`: the carry is :class:`MemberStates`, ``M`` train states stacked on a
  leading axis, each member's optimizer settings and whether it is still training. Each
  member keeps its own initial params, step keys (``fold_in(key, step)`` of its own key)
  and data order (``rng([seed, epoch])`` of its own seed): the rules of a single run, so a
  member ends allclose to the separate run with its seed and settings (vectorised
  arithmetic may round differently, ~1e-7). A member whose loss, metrics or new params
  stop being finite, or that a hook stops, is frozen at its state then; the others go on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fundl._core import EvalFn, Loss
from fundl.metrics import finished
from fundl.train._data import Shuffled
from fundl.train._records import Metrics
from fundl.train._state import TrainState
from fundl.train._step import train_step_fn

Hyper = dict[str, jax.Array]


def _plain(value: Any) -> Any:
    """A finished metric as a record keeps it: a float, or an array as nested lists (JSON)."""
    return value.tolist() if isinstance(value, np.ndarray) else value


StepFn = Callable[[Any, Any], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class OneRun:
    """A single run: the train state is stepped by ``step_fn`` (default: ``loss`` and ``optimizer``'s step)."""

    optimizer: optax.GradientTransformation
    step_fn: StepFn | None = None
    size: None = None
    lanes: int = 1

    def step(self, loss: Loss, accumulate: int) -> StepFn:
        return self.step_fn or train_step_fn(loss.fn, self.optimizer, accumulate)

    def eval_fn(self, evaluate: EvalFn) -> EvalFn:
        return evaluate

    def train_state(self, carry: TrainState, lane: int = 0) -> TrainState:
        return carry

    def eval_args(self, carry: TrainState) -> tuple[Any, Any]:
        return carry.params, carry.state

    def step_count(self, carry: TrainState) -> int:
        return int(carry.step)

    def orders(self, data: Any, batch_size: int, seeds: Sequence[int]) -> list[Shuffled]:
        return [Shuffled(data, batch_size, seed=seeds[0])]

    def lane_metrics(self, outputs: dict[str, np.ndarray], steps: int) -> tuple[list[Metrics | None], list[int | None]]:
        """Each lane's metrics of a call's steps, and the step (index in the call) at which each lane froze."""
        return [{name: np.reshape(values, (steps,)) for name, values in outputs.items()}], [None]

    def lane_means(self, means: dict[str, Any]) -> list[dict[str, Any]]:
        return [{name: _plain(finished(value)) for name, value in means.items()}]

    def freeze(self, carry: TrainState, lanes: Sequence[int]) -> TrainState:
        return carry  # a single run stops instead


class MemberStates(NamedTuple):
    """A population's carry: ``M`` train states stacked, their settings, and which still train.

    Attributes:
      states: a :class:`TrainState` whose every leaf has a leading member axis ``(M, ...)``.
      alive: bool ``(M,)``: the members still training (the others are frozen).
      hyper: each swept optimizer setting's ``(M,)`` values (float32), by name.
    """

    states: TrainState
    alive: jax.Array
    hyper: Hyper

    @classmethod
    def of(cls, states: TrainState, hyper: dict[str, Any] | None = None) -> "MemberStates":
        """A population's carry: stacked ``states`` (leading axis ``M``), all alive, with settings ``{name: (M,)}``."""
        size = jax.tree.leaves(states)[0].shape[0]
        hyper = {name: jnp.asarray(values, jnp.float32).reshape(size) for name, values in (hyper or {}).items()}
        return cls(states, jnp.ones((size,), bool), hyper)


@dataclasses.dataclass(frozen=True)
class Members:
    """A population of ``size`` members: each step is ``vmap`` of one member's step, with its own optimizer.

    Attributes:
      optimizer_fn: ``hyper -> optax optimizer``, called inside the compiled step with one
        member's settings (traced scalars), e.g. its learning rate.
      size: the number of members, ``M``.
      vectorized: step the members with ``vmap`` (one call for all); ``False``: one call per
        member, each on its slice of the stacked carry, where vmapping does not pay (the
        loop chooses it for convolutions on XLA:CPU, whose vmapped form runs as grouped
        convolutions, slower per member than each member alone: benchmarks/README.md).
    """

    optimizer_fn: Callable[[Hyper], optax.GradientTransformation]
    size: int
    vectorized: bool = True

    @property
    def lanes(self) -> int:
        return self.size

    def _member_step(self, loss: Loss, accumulate: int) -> Callable:
        """One member's step, frozen where it (or its new params) stops being finite or it was stopped."""

        def member_step(state: TrainState, hyper: Hyper, alive: jax.Array, batch: Any):
            new, metrics = train_step_fn(loss.fn, self.optimizer_fn(hyper), accumulate)(state, batch)
            finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((metrics, new.params))]))
            keep = alive & finite  # a member that stops being finite is frozen at its last good state
            return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, state), keep, metrics

        return member_step

    def step(self, loss: Loss, accumulate: int) -> StepFn:
        """Every member's step at once: ``(carry, batches (M, B, ...)) -> (carry, (metrics (M,), alive (M,)))``."""
        members_step = jax.vmap(self._member_step(loss, accumulate))

        def step(carry: MemberStates, batch: Any) -> tuple[MemberStates, tuple[dict[str, jax.Array], jax.Array]]:
            states, alive, metrics = members_step(carry.states, carry.hyper, carry.alive, batch)
            return MemberStates(states, alive, carry.hyper), (metrics, alive)

        return step

    def step_one(self, loss: Loss, accumulate: int) -> Callable:
        """Member ``i``'s step on its slice of the carry: ``(carry, batches (M, B, ...), i) -> (carry, outputs)``."""
        member_step = self._member_step(loss, accumulate)

        def step(
            carry: MemberStates, batch: Any, i: jax.Array
        ) -> tuple[MemberStates, tuple[dict[str, jax.Array], jax.Array]]:
            take = lambda tree: jax.tree.map(lambda leaf: jax.lax.dynamic_index_in_dim(leaf, i, keepdims=False), tree)  # noqa: E731
            new, keep, metrics = member_step(take(carry.states), take(carry.hyper), carry.alive[i], take(batch))
            states = jax.tree.map(
                lambda leaf, value: jax.lax.dynamic_update_index_in_dim(leaf, value, i, 0), carry.states, new
            )
            return MemberStates(states, carry.alive.at[i].set(keep), carry.hyper), (metrics, keep)

        return step

    def eval_fn(self, evaluate: EvalFn) -> EvalFn:
        return jax.vmap(evaluate, in_axes=(0, 0, None))  # each member's params and state, the batch shared

    def train_state(self, carry: MemberStates, lane: int = 0) -> TrainState:
        return _member_state(carry.states, lane)

    def eval_args(self, carry: MemberStates) -> tuple[Any, Any]:
        return carry.states.params, carry.states.state

    def step_count(self, carry: MemberStates) -> int:
        return int(np.asarray(carry.states.step)[0])

    def orders(self, data: Any, batch_size: int, seeds: Sequence[int]) -> list[Shuffled]:
        if len(seeds) != self.size:
            raise ValueError(f"a population of {self.size} members needs {self.size} data seeds, got {len(seeds)}")
        return [Shuffled(data, batch_size, seed=seed) for seed in seeds]

    def lane_metrics(
        self, outputs: tuple[dict[str, np.ndarray], np.ndarray], steps: int
    ) -> tuple[list[Metrics | None], list[int | None]]:
        metrics, kept = outputs  # (steps, M) each
        kept = np.reshape(kept, (steps, self.size))
        lanes: list[Metrics | None] = []
        frozen: list[int | None] = []
        for member in range(self.size):
            stopped = np.flatnonzero(~kept[:, member])
            last = int(stopped[0]) + 1 if stopped.size else steps  # up to and including the step that froze it
            frozen.append(int(stopped[0]) if stopped.size else None)
            lanes.append(
                {name: np.reshape(values, (steps, self.size))[:last, member] for name, values in metrics.items()}
                if last
                else None
            )
        return lanes, frozen

    def lane_means(self, means: dict[str, Any]) -> list[dict[str, Any]]:
        return [{name: _plain(finished(value, m)) for name, value in means.items()} for m in range(self.size)]

    def freeze(self, carry: MemberStates, lanes: Sequence[int]) -> MemberStates:
        if not lanes:
            return carry
        keep = np.ones(self.size, bool)
        keep[list(lanes)] = False
        alive = np.logical_and(np.asarray(carry.alive), keep)
        return carry._replace(alive=jax.device_put(alive, carry.alive.sharding))  # the layout the compiled calls expect


@jax.jit
def _member_state(states: TrainState, lane: jax.Array | int) -> TrainState:
    """Member ``lane``'s train state: one compiled call for every leaf (slicing leaf by leaf dispatches an
    operation per leaf, which at every boundary of a sweep cost more than its training)."""
    return jax.tree.map(lambda leaf: leaf[lane], states)
