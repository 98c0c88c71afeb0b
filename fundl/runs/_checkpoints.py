"""Periodic checkpoints of a run: atomic, asynchronous and verified (the signals that ask for one: _lifecycle.py).

A checkpoint holds everything a run needs to go on exactly as if it had never stopped:
the whole train state (step, params, model state, optimizer state, key; the step is also
the position in the data, whose order depends only on the seed and the epoch; for a sweep,
every member's, their settings and which still train), the state of the hooks
(early-stopping counters, the best params so far) and how each member of a sweep ended.

Each checkpoint is one file, ``checkpoints/<step>.ckpt``: a SHA-256 digest, then the
flax msgpack of the state. It is written by a background thread (training goes on)
into a temporary file that is synced and renamed when complete, so a save killed midway
leaves only a ``.<step>.ckpt.tmp*`` file, which is never read and is removed when the run
resumes; a file that was damaged later fails its digest. On the course's models a save
must cost milliseconds (a digits epoch takes a fraction of a second), and these files are
faster there than orbax-checkpoint, whose save costs tens of milliseconds of blocking
whatever the size (benchmarks/README.md, checkpoint_cost.py).

A state sharded over devices (FSDP), spread over processes, or larger than
:data:`ORBAX_BYTES` is saved with orbax instead (:mod:`fundl.runs._orbax`): every process
writes its own shards, asynchronously, and nothing is gathered. Both kinds restore onto
any number of devices, and ``fundl resume`` reads whichever the latest checkpoint is.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp

from fundl.distributed import host_copy, key_data
from fundl.runs._files import write_atomic, write_json
from fundl.runs._orbax import SUBDIRECTORY as ORBAX_SUBDIRECTORY, OrbaxStore
from fundl.runs._state_file import from_host

SUFFIX = ".ckpt"
ORBAX_BYTES = 64 << 20  # a single-process state larger than this is saved with orbax (see benchmarks/README.md)
_INDEX = "index.json"  # the watched metric of each checkpoint, for keeping the best
_MAX_PENDING = 3  # saves queued for the writer thread before save() waits


class Checkpoints:
    """When and where a run saves checkpoints: a :class:`fundl.train.Checkpointer` for ``fit``.

    Args:
      directory: where the checkpoints go, ``<directory>/<step>.ckpt`` (a run's ``checkpoints/``).
      steps_per_epoch: to turn ``every_epochs`` into steps.
      every_steps, every_epochs: how often to save (the more frequent wins); a run
        always saves at its end too.
      keep: how many of the latest checkpoints to keep.
      best: also keep the checkpoint with the best value of this metric, e.g.
        ``"validation/accuracy"``; ``best_mode`` says whether ``"max"`` or ``"min"`` is best.
      stop_after_steps: stop training at this step, as if preempted.
      run_id: saved with every checkpoint and checked on restore, so that a checkpoint
        copied from another run is refused.
      format: ``"auto"`` (orbax for sharded, multi-process or large states, fundl's files
        otherwise), ``"orbax"`` or ``"file"``.
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
        format: str = "auto",
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if format not in ("auto", "orbax", "file"):
            raise ValueError(f"format must be 'auto', 'orbax' or 'file', got {format!r}")
        self.format = format
        self._orbax: OrbaxStore | None = None
        intervals = [every for every in (every_steps, every_epochs and every_epochs * steps_per_epoch) if every]
        self.every = min(intervals) if intervals else None
        self.stop_after_steps = stop_after_steps
        self.directory = Path(directory)
        self.keep, self.best, self.best_mode, self.run_id = keep, best, best_mode, run_id
        self.preemption: str | None = None  # set by a signal handler (see fundl.runs._lifecycle.RunSignals)
        self._writer = jax.process_index() == 0  # in a multi-process run, process 0 writes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fundl-checkpoint")
        self._pending: list[Future] = []
        if self._writer:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_unfinished(self.directory)
        self._scores: dict[int, float] = self._read_scores()

    # --- the Checkpointer protocol of fit -----------------------------------------------------

    def next_step(self, step: int) -> int | None:
        due = [
            s for s in (self.every and step + self.every - step % self.every, self.stop_after_steps) if s and s > step
        ]
        return min(due) if due else None

    def save(self, step: int, train_state: Any, extra: dict[str, Any], metrics: dict[str, float]) -> None:
        score = metrics.get(self.best) if self.best else None
        if self._wants_orbax(train_state):  # every process writes its own shards
            self._orbax_store().save(step, train_state, {"run_id": self.run_id, "step": step, "extra": extra}, score)
            return
        train_state = _device_copy(train_state)  # dispatched, not waited for: the writer thread fetches it
        if not self._writer:
            return
        while len(self._pending) >= _MAX_PENDING or (self._pending and self._pending[0].done()):
            self._pending.pop(0).result()  # bounded memory; raises if an earlier save failed
        self._pending.append(self._pool.submit(self._write, step, train_state, extra, score))

    def _wants_orbax(self, train_state: Any) -> bool:
        if self.format != "auto":
            return self.format == "orbax"
        if jax.process_count() > 1:
            return True
        leaves = [leaf for leaf in jax.tree.leaves(key_data(train_state)) if isinstance(leaf, jax.Array)]
        if any(len(leaf.sharding.device_set) > 1 and not leaf.sharding.is_fully_replicated for leaf in leaves):
            return True
        return sum(leaf.nbytes for leaf in leaves) > ORBAX_BYTES

    def _orbax_store(self) -> OrbaxStore:
        if self._orbax is None:
            self._orbax = OrbaxStore(self.directory, keep=self.keep, best=self.best, best_mode=self.best_mode)
        return self._orbax

    def _orbax_steps(self) -> list[int]:
        if self._orbax is None and not (self.directory / ORBAX_SUBDIRECTORY).is_dir():
            return []
        return self._orbax_store().steps()

    def interrupted(self, step: int) -> str | None:
        """Why training should stop after ``step``: a signal that came before the loop held the signals, or
        the step limit; ``None`` to go on."""
        if self.preemption:
            return self.preemption
        if self.stop_after_steps is not None and step >= self.stop_after_steps:
            return f"stopped after {step} steps (--stop-after-steps)"
        return None

    # --- writing, in the background ------------------------------------------------------------

    def _read_scores(self) -> dict[int, float]:
        """The watched metric of each checkpoint: ``index.json``, or if a kill or a full disk left it unreadable,
        what the checkpoints themselves recorded (each holds its own score)."""
        index = self.directory / _INDEX
        if not index.is_file():
            return {}
        try:
            return {int(k): float(v) for k, v in json.loads(index.read_text()).items()}
        except (ValueError, TypeError, AttributeError):
            scores = {}
            for step in self.steps():
                try:
                    score = _payload(self.directory / f"{step}{SUFFIX}").get("score")
                except ValueError:
                    continue  # a damaged checkpoint: restoring it is what reports it
                if score is not None:
                    scores[step] = float(score)
            return scores

    def _write(self, step: int, train_state: Any, extra: dict[str, Any], score: float | None) -> None:
        host = flax.serialization.to_state_dict(host_copy(train_state))
        data = flax.serialization.msgpack_serialize(
            {"run_id": self.run_id, "step": step, "train_state": host, "score": score, **extra}
        )
        write_atomic(self.directory / f"{step}{SUFFIX}", hashlib.sha256(data).digest() + data, sync_directory=False)
        if score is not None:
            self._scores[step] = score
            write_json(self.directory / _INDEX, self._scores)
        self._prune()

    def _prune(self) -> None:
        """Deletes all but the latest ``keep`` checkpoints and the best one."""
        steps = self.steps()
        kept = set(steps[-self.keep :]) if self.keep else set()
        scored = [s for s in steps if s in self._scores]
        if scored:
            pick = max if self.best_mode == "max" else min
            kept.add(pick(scored, key=lambda s: (self._scores[s], s)))
        for step in set(steps) - kept:
            (self.directory / f"{step}{SUFFIX}").unlink(missing_ok=True)

    def wait(self) -> None:
        """Blocks until every pending save is written (re-raising the first error, if any)."""
        while self._pending:
            self._pending.pop(0).result()
        if self._orbax is not None:
            self._orbax.wait()

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()
        if self._orbax is not None:
            self._orbax.close()

    # --- reading back ---------------------------------------------------------------------------

    def _file_steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(
            int(p.name[: -len(SUFFIX)]) for p in self.directory.glob(f"*{SUFFIX}") if p.name[: -len(SUFFIX)].isdigit()
        )

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints (of both kinds), oldest first."""
        return sorted(set(self._file_steps()) | set(self._orbax_steps()))

    def restore(self, like: Any, step: int | None = None, shardings: Any = None) -> tuple[int, Any, dict[str, Any]]:
        """The train state and what was saved with it (``extra``) of the checkpoint at ``step`` (default: the latest).

        Args:
          like: a train state of the same model and optimizer (arrays or
            ``jax.ShapeDtypeStruct``), the target the checkpoint is read into.
          shardings: where each array of the restored state goes (a tree of shardings
            like ``like``, e.g. ``Placement.state_shardings``); ``None``: one device. An
            orbax checkpoint reads each process's shards straight into them.

        Raises:
          FileNotFoundError: there is no complete checkpoint.
          ValueError: the checkpoint is damaged, belongs to another run, or does not
            match ``like`` (the message names the first entry that differs).
        """
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        step = steps[-1] if step is None else step
        if step not in self._file_steps():
            return self._restore_orbax(step, like, shardings)
        path = self.directory / f"{step}{SUFFIX}"
        payload = _payload(path)
        if payload.get("run_id") != self.run_id:
            raise ValueError(
                f"the checkpoint {path} was written by another run ({payload.get('run_id')}), not by {self.run_id}"
            )
        extra = {k: v for k, v in payload.items() if k not in ("run_id", "step", "train_state", "score")}
        return payload["step"], from_host(payload["train_state"], like, f"the checkpoint {path}"), extra

    def _restore_orbax(self, step: int, like: Any, shardings: Any) -> tuple[int, Any, dict[str, Any]]:
        store = self._orbax_store()
        path = store.path(step)
        try:
            state, meta = store.restore(step, like, shardings)
        except Exception as error:  # orbax and tensorstore raise many kinds for a damaged or foreign checkpoint
            raise ValueError(
                f"the checkpoint {path} cannot be read as this run's train state: "
                f"{type(error).__name__}: {str(error)[:500]}"
            ) from None
        if meta.get("run_id") != self.run_id:
            raise ValueError(
                f"the checkpoint {path} was written by another run ({meta.get('run_id')}), not by {self.run_id}"
            )
        return int(meta["step"]), state, dict(meta["extra"])


def _payload(path: Path) -> dict[str, Any]:
    """A checkpoint file's contents, checked against its digest."""
    raw = path.read_bytes()
    digest, data = raw[:32], raw[32:]
    if hashlib.sha256(data).digest() != digest:
        raise ValueError(f"the checkpoint {path} is corrupted or truncated: its contents do not match their SHA-256")
    try:
        payload = flax.serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several kinds for a broken file
        raise ValueError(f"the checkpoint {path} cannot be read: {type(error).__name__}: {error}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"the checkpoint {path} does not hold a checkpoint")
    return payload


@jax.jit
def _device_copy(train_state: Any) -> Any:
    """A copy in new device buffers: the next training step reuses (donates) the old ones."""
    return jax.tree.map(jnp.copy, train_state)


def remove_unfinished(directory: Path) -> list[Path]:
    """Deletes the temporary files of saves that never completed (a killed process)."""
    unfinished = sorted(directory.glob(f".*{SUFFIX}.*.tmp")) if directory.is_dir() else []
    for path in unfinished:
        path.unlink(missing_ok=True)
    return unfinished
