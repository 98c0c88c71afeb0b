"""Experiments: what an example is, how it is found and configured, and its first train state.

An **example** is a Python module with a ``CONFIG`` dict (its own keys on top of
:data:`~fundl.runs.DEFAULTS`) and a function ``experiment(config) -> Experiment``.
Running one (:mod:`fundl.runs._run`) records it in a run directory (:mod:`fundl.runs._rundir`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from fundl._core import EvalFn, Layer, Loss, LossFn, Shape
from fundl._data import check_batch_size, num_examples
from fundl.runs._config import Config, resolve
from fundl.runs._describe import bundled_examples
from fundl.train import History, Hook, TrainState


class Experiment(NamedTuple):
    """What an example gives ``fundl run``: a model, its data and its loss.

    Attributes:
      model: the model to train.
      input_shape: the shape of one training batch's model input, batch axis included.
      loss_fn: a :class:`~fundl.Loss`, or ``(params, state, batch, key) -> (loss, (new_state, metrics))``.
      train_data: a pytree of arrays with a leading example axis.
      eval_data: named splits evaluated during training, e.g. ``{"validation": ...}``:
        what the curves show, early stopping watches and the best checkpoint is chosen by.
      test_data: named held-out splits scored once, with the final params, after
        training, e.g. ``{"test": ...}``: nothing during training looks at them, so their
        scores are not tuned on.
      eval_fn: ``(params, state, batch) -> metrics``, if ``loss_fn`` takes no ``train`` keyword.
      hooks: extra hooks for ``fit`` (in a sweep, each member gets its own deep copy).
      report: called with the finished :class:`Run`, e.g. to draw pictures into its directory.
      sample: ``sample(run, prompt, temperature=..., length=..., seed=...) -> str`` for
        generative examples, used by ``fundl sample RUN_DIR``.
      optimizer: ``optimizer(config, total_steps) -> optax.GradientTransformation``, any optax
        optimizer, instead of the one the config names (``optimizer.*`` keys then mean what
        this function makes of them). In a sweep it is called with the swept settings as
        traced numbers: use them as optax does, never in Python ``if`` or ``float()``.
      schedule: ``schedule(config, total_steps) -> optax.Schedule``, the learning rate per
        step, instead of ``optimizer.schedule``: the config's optimizer takes it, and it is
        logged as ``learning_rate`` (with ``optimizer`` too, only logged: make the optimizer
        use it).
      augment: ``augment(example, rng) -> example``, applied to each training example as it
        is read (in worker processes with ``data.workers``); a module-level function.
      data_record: what identifies data that its arrays alone do not (a corpus's source,
        SHA-256 and the Python that shipped it), written to ``environment.json`` as ``data``.

    Example:
      >>> def optimizer(config, total_steps):
      ...     rate = optax.warmup_cosine_decay_schedule(0.0, config["optimizer"]["learning_rate"], 100, total_steps)
      ...     return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(rate, weight_decay=0.05))
      >>> Experiment(model, input_shape, loss_fn, train_data, optimizer=optimizer)
    """

    model: Layer
    input_shape: Shape
    loss_fn: Loss | LossFn
    train_data: Any
    eval_data: dict[str, Any] | None = None
    test_data: dict[str, Any] | None = None
    eval_fn: EvalFn | None = None
    hooks: Sequence[Hook] = ()
    report: Callable[["Run"], None] | None = None
    sample: Callable[..., str] | None = None
    optimizer: Callable[[Config, int], Any] | None = None
    schedule: Callable[[Config, int], Callable[[Any], Any]] | None = None
    augment: Callable[[Any, Any], Any] | None = None
    data_record: Mapping[str, Any] | None = None


class Run(NamedTuple):
    """A finished (or loaded) run: its directory, config, experiment, final train state and results.

    ``directory`` is ``None`` on the processes of a multi-process run that do not write (all but process 0).
    A sweep's ``train_state`` holds every member's, stacked; ``members`` says who each member is and how it did
    (``None`` for a single run).
    """

    directory: Path | None
    config: Config
    experiment: Experiment
    train_state: TrainState
    history: History | None
    summary: dict[str, Any]
    members: list[dict[str, Any]] | None = None

    @property
    def loss(self) -> Loss:
        """The experiment's loss as a :class:`~fundl.Loss` (with its ``eval_fn``)."""
        return Loss.of(self.experiment.loss_fn, self.experiment.eval_fn)


def load_example(name_or_path: str) -> ModuleType:
    """Imports a bundled example by name, or an example file by path; checks its form."""
    path = Path(name_or_path)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"example file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"fundl_example_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"example file {path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        available = bundled_examples()
        if name_or_path not in available:
            raise ValueError(
                f"unknown example {name_or_path!r}; bundled examples: "
                f"{', '.join(available)} (or give a path to a .py file)"
            )
        module = importlib.import_module(f"fundl.examples.{name_or_path}")
    if not isinstance(getattr(module, "CONFIG", None), dict) or not callable(getattr(module, "experiment", None)):
        raise ValueError(
            f"example {name_or_path!r} must define a CONFIG dict and a function experiment(config) -> Experiment"
        )
    return module


def resolve_config(module: ModuleType, settings: Iterable[tuple[str, Any]] = ()) -> Config:
    """DEFAULTS, then the example's CONFIG, then the ``(dotted_key, value)`` settings (see :func:`fundl.runs.override`:
    an optimizer's own settings, its learning rate above all, never carry over to another optimizer)."""
    return resolve(module.CONFIG, settings)


def total_steps(config: Config, experiment: Experiment) -> int:
    """The run's length in steps (for learning-rate schedules); checks the batch size first."""
    n, batch_size = num_examples(experiment.train_data, "train data"), config["train"]["batch_size"]
    check_batch_size(batch_size, n, "train data")
    steps = config["train"]["steps"]
    return steps if steps is not None else config["train"]["epochs"] * (n // batch_size)
