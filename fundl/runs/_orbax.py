"""Checkpoints that never gather: every process writes its own shards with orbax-checkpoint, asynchronously.

A train state sharded over devices (FSDP) or spread over processes cannot, or should not,
pass through one process's memory. Here each process writes the shards it holds (orbax's
OCDBT layout, ``ocdbt.process_<i>`` files) while training goes on: a save blocks only for
the copy of the device buffers to the host. A checkpoint is a step directory under
``checkpoints/orbax/`` with two items: ``state`` (the train state, PRNG keys as raw key
data) and ``meta`` (the run id, the step, and what the loop saves beside the state: the
hooks' states and a sweep's members, as msgpack in base64). Orbax writes it into a
temporary directory and renames it when every process has finished (atomic finalize), so
a save killed midway is never read. It restores onto any mesh and device count: each
array is read straight into the layout the restoring run asks for.

Used by :class:`fundl.runs.Checkpoints` when the state is sharded, the run has several
processes, or the state is large (orbax's fixed cost per save, ~150 ms, is then small).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import flax.serialization
import jax

from fundl.distributed import key_data, wrap_keys

SUBDIRECTORY = "orbax"


class OrbaxStore:
    """The orbax half of a run's checkpoints: keep the latest ``keep`` and the best by ``best`` (a metric name)."""

    def __init__(self, directory: Path, *, keep: int, best: str | None, best_mode: str):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as managers

        self.directory = Path(directory) / SUBDIRECTORY
        policies: list[Any] = [managers.LatestN(keep)]
        if best is not None:
            # BestN keeps the n checkpoints whose metric sorts last; reverse sorts the other way (lower is better)
            policies.append(managers.BestN(get_metric_fn=lambda m: m["best"], reverse=best_mode == "min", n=1))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=True,
            preservation_policy=managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,
            create=True,
        )
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(int(step) for step in self.manager.all_steps())

    def save(self, step: int, carry: Any, meta: dict[str, Any], score: float | None) -> None:
        """Starts writing this process's shards of ``carry`` (every process calls it); returns once they are copied."""
        meta = {**meta, "extra": base64.b64encode(flax.serialization.msgpack_serialize(meta["extra"])).decode()}
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(key_data(carry)), meta=self._ocp.args.JsonSave(meta)
        )
        self.manager.save(step, args=args, metrics=None if score is None else {"best": float(score)})

    def restore(self, step: int, like: Any, shardings: Any) -> tuple[Any, dict[str, Any]]:
        """The carry at ``step`` read into ``like``'s shapes with ``shardings`` (any mesh), and its meta."""
        raw = jax.eval_shape(key_data, like)
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shardings = jax.tree.map(lambda _: device, raw)
        else:
            shardings = jax.tree.map(lambda s, _: s, shardings, raw)
        target = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), raw, shardings
        )
        args = self._ocp.args.Composite(state=self._ocp.args.StandardRestore(target), meta=self._ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        meta = dict(restored["meta"])
        meta["extra"] = flax.serialization.msgpack_restore(base64.b64decode(meta["extra"]))
        return wrap_keys(restored["state"], like), meta

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
