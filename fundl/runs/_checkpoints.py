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
resumes; a file that was damaged later fails its digest. Why not orbax-checkpoint: on
the course's models a save must cost milliseconds (a digits epoch takes a fraction of a
second), and an orbax save costs tens of milliseconds of blocking whatever the size
(benchmarks/README.md, checkpoint_cost.py).
On a mesh or across processes the state is gathered to process 0, which writes it; a
checkpoint restores onto any number of devices.
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

from fundl.distributed import host_copy
from fundl.runs._files import write_atomic, write_json
from fundl.runs._state_file import from_host

SUFFIX = ".ckpt"
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
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
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
        if jax.process_count() > 1:
            train_state = host_copy(train_state)  # a collective: every process takes part; process 0 writes
        else:
            train_state = _device_copy(train_state)  # dispatched, not waited for: the writer thread fetches it
        if not self._writer:
            return
        while len(self._pending) >= _MAX_PENDING or (self._pending and self._pending[0].done()):
            self._pending.pop(0).result()  # bounded memory; raises if an earlier save failed
        score = metrics.get(self.best) if self.best else None
        self._pending.append(self._pool.submit(self._write, step, train_state, extra, score))

    def interrupted(self, step: int) -> str | None:
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

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()

    # --- reading back ---------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            int(p.name[: -len(SUFFIX)]) for p in self.directory.glob(f"*{SUFFIX}") if p.name[: -len(SUFFIX)].isdigit()
        )

    def restore(self, like: Any, step: int | None = None) -> tuple[int, Any, dict[str, Any]]:
        """The train state and what was saved with it (``extra``) of the checkpoint at ``step`` (default: the latest).

        Args:
          like: a train state of the same model and optimizer (arrays or
            ``jax.ShapeDtypeStruct``), the target the checkpoint is read into.

        Raises:
          FileNotFoundError: there is no complete checkpoint.
          ValueError: the checkpoint is damaged, belongs to another run, or does not
            match ``like`` (the message names the first entry that differs).
        """
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        path = self.directory / f"{steps[-1] if step is None else step}{SUFFIX}"
        payload = _payload(path)
        if payload.get("run_id") != self.run_id:
            raise ValueError(
                f"the checkpoint {path} was written by another run ({payload.get('run_id')}), not by {self.run_id}"
            )
        extra = {k: v for k, v in payload.items() if k not in ("run_id", "step", "train_state", "score")}
        return payload["step"], from_host(payload["train_state"], like, f"the checkpoint {path}"), extra


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
