"""Periodic checkpoints of a run with orbax-checkpoint, and the preemption signals that trigger one.

A checkpoint holds everything a run needs to go on exactly as if it had never stopped:
the whole train state (step, params, model state, optimizer state, key; the step is
also the position in the data, whose order depends only on the seed and the epoch) and
the state of the hooks (early-stopping counters, the best params so far). orbax writes
each one into a temporary directory and renames it when complete, so a save killed
midway leaves a ``*.orbax-checkpoint-tmp*`` directory that is never read and is removed
when the run resumes. Saves are asynchronous: training goes on while they are written.
"""

from __future__ import annotations

import logging
import shutil
import signal
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from fundl.train import TrainState

CHECKPOINTS = "checkpoints"


def _raw(train_state: TrainState) -> TrainState:
    """The train state with its typed PRNG key as raw key data, which every writer can store."""
    return train_state._replace(key=jax.random.key_data(train_state.key))


def checksum(tree: Any) -> jax.Array:
    """A uint32 sum of every byte of every leaf, weighted by position: any flipped bit changes it.

    Computed on the device (no transfer), saved with the checkpoint, and compared after a
    restore, because the storage format itself does not verify what it reads back.
    """
    total = jnp.uint32(0)
    for leaf in jax.tree.leaves(tree):
        data = jax.lax.bitcast_convert_type(jnp.ravel(leaf), jnp.uint8).ravel().astype(jnp.uint32)
        weights = jnp.arange(data.size, dtype=jnp.uint32) % 65521 + 1
        total = total * jnp.uint32(31) + jnp.sum(data * weights, dtype=jnp.uint32)
    return total


class Checkpoints:
    """When and where a run saves checkpoints: a :class:`fundl.train.Checkpointer` for ``fit``.

    Args:
      directory: the run directory; checkpoints go to ``directory/checkpoints/<step>``.
      steps_per_epoch: to turn ``every_epochs`` into steps.
      every_steps, every_epochs: how often to save (the more frequent wins); a run
        always saves at its end too.
      keep: how many of the latest checkpoints to keep.
      best: also keep the checkpoint with the best value of this metric, e.g.
        ``"test/accuracy"``, and ``best_mode`` says whether ``"max"`` or ``"min"`` is best.
      stop_after_steps: stop training at this step, as if preempted.
      run_id: saved with every checkpoint and checked on restore, so that a checkpoint
        copied from another run is refused.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        steps_per_epoch: int,
        every_steps: int | None = None,
        every_epochs: int | None = 1,
        keep: int = 3,
        best: str | None = None,
        best_mode: str = "max",
        stop_after_steps: int | None = None,
        run_id: str = "",
    ):
        import orbax.checkpoint as ocp  # imported here: it takes a second, and only checkpointing runs need it

        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        intervals = [every for every in (every_steps, every_epochs and every_epochs * steps_per_epoch) if every]
        self.every = min(intervals) if intervals else None
        self.stop_after_steps = stop_after_steps
        self.directory = Path(directory) / CHECKPOINTS
        self.preemption: str | None = None  # set by a signal handler (see preemption_signals)
        policies = [ocp.checkpoint_managers.LatestN(keep)]
        if best:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: metrics[best], reverse=best_mode == "min", n=1, keep_checkpoints_without_metrics=False
            ))
        remove_unfinished(self.directory)
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory.resolve(),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                enable_async_checkpointing=True,
            ),
        )
        self._best = best
        self.run_id = run_id

    # --- the Checkpointer protocol of fit -----------------------------------------------------

    def next_step(self, step: int) -> int | None:
        due = [s for s in (self.every and step + self.every - step % self.every, self.stop_after_steps) if s and s > step]
        return min(due) if due else None

    def save(self, step: int, train_state: TrainState, hook_states: list[Any], metrics: dict[str, float]) -> None:
        state, check = _copy_and_checksum(_raw(train_state))
        extras = flax.serialization.msgpack_serialize({"run_id": self.run_id, "hooks": hook_states})
        args = self._ocp.args.Composite(
            train_state=self._ocp.args.StandardSave(state),
            extras=self._ocp.args.StandardSave({"msgpack": np.frombuffer(extras, np.uint8), "checksum": check}),
        )
        self._manager.save(step, args=args, metrics=({self._best: metrics[self._best]} if self._best in metrics else None))

    def interrupted(self, step: int) -> str | None:
        if self.preemption:
            return self.preemption
        if self.stop_after_steps is not None and step >= self.stop_after_steps:
            return f"stopped after {step} steps (--stop-after-steps)"
        return None

    # --- reading back ---------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(self, like: TrainState, step: int | None = None) -> tuple[int, TrainState, list[Any]]:
        """The train state and hook states of the checkpoint at ``step`` (default: the latest).

        Args:
          like: a train state of the same model and optimizer (arrays or
            ``jax.ShapeDtypeStruct``), the target the checkpoint is read into.

        Raises:
          FileNotFoundError: there is no complete checkpoint.
          ValueError: the checkpoint does not match ``like``; the message names the first
            entry that differs, or what could not be read.
        """
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        step = steps[-1] if step is None else step
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0])),
            jax.eval_shape(_raw, like),
        )
        where = self.directory / str(step)
        _check_saved_structure(where, target)
        try:
            restored = self._manager.restore(step, args=self._ocp.args.Composite(
                train_state=self._ocp.args.StandardRestore(target), extras=self._ocp.args.StandardRestore()
            ))
            extras = flax.serialization.msgpack_restore(np.asarray(restored["extras"]["msgpack"]).tobytes())
        except Exception as error:  # orbax, tensorstore and msgpack raise many kinds for a broken checkpoint
            raise ValueError(f"the checkpoint {where} cannot be read: {type(error).__name__}: {error}") from None
        raw = restored["train_state"]
        if int(checksum(raw)) != int(restored["extras"]["checksum"]):
            raise ValueError(f"the checkpoint {where} is corrupted: its arrays do not match the checksum saved with them")
        if extras["run_id"] != self.run_id:
            raise ValueError(f"the checkpoint {where} was written by another run ({extras['run_id']}), not by {self.run_id}")
        impl = jax.random.key_impl(like.key) if isinstance(like.key, jax.Array) else None  # None: JAX's default
        return step, raw._replace(key=jax.random.wrap_key_data(raw.key, impl=impl)), extras["hooks"]

    def wait(self) -> None:
        """Blocks until every save has been written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


@jax.jit
def _copy_and_checksum(tree: Any) -> tuple[Any, jax.Array]:
    """A device-side copy (the next step reuses the original buffers while the copy is
    written in the background) and its checksum, in one dispatch."""
    return jax.tree.map(jnp.copy, tree), checksum(tree)


def remove_unfinished(directory: Path) -> list[Path]:
    """Deletes the temporary directories of saves that never completed (a killed process)."""
    unfinished = sorted(directory.glob("*.orbax-checkpoint-tmp*")) if directory.is_dir() else []
    for path in unfinished:
        shutil.rmtree(path, ignore_errors=True)
    return unfinished


def _check_saved_structure(where: Path, target: Any) -> None:
    """Compares the saved tree's paths, shapes and dtypes with ``target``'s; names the first difference."""
    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that the item has no metadata file of its own: it is the step's
    try:
        saved = ocp.StandardCheckpointer().metadata(where / "train_state").item_metadata.tree
    except Exception as error:
        raise ValueError(f"the checkpoint {where} cannot be read: {type(error).__name__}: {error}") from None
    finally:
        absl.setLevel(level)
    expected = _types(target)
    got = _types(saved)
    for name in dict.fromkeys([*expected, *got]):
        if expected.get(name) != got.get(name):
            raise ValueError(
                f"the checkpoint {where} does not match this model and optimizer at {name}: "
                f"expected {expected.get(name, 'nothing')}, found {got.get(name, 'nothing')}"
            )


def _types(tree: Any) -> dict[str, str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path(p): f"{np.dtype(leaf.dtype)}{list(leaf.shape)}" for p, leaf in leaves}


def _path(path: tuple) -> str:
    """A tree path as dotted names, the same for a NamedTuple and the dict orbax reads back."""
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


class preemption_signals:
    """While active, SIGTERM and the first SIGINT (Ctrl-C) ask ``checkpoints`` to stop the run.

    ``fit`` then finishes the call in flight, saves a checkpoint and returns; a second
    Ctrl-C aborts at once (``KeyboardInterrupt``). Handlers are only installed in the
    main thread.
    """

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.checkpoints.preemption:
            raise KeyboardInterrupt
        self.checkpoints.preemption = f"interrupted by {signal.Signals(signum).name}"

    def __enter__(self) -> "preemption_signals":
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
