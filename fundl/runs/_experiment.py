"""Experiments: what an example is, how it is found and configured, and its first train state.

An **example** is a Python module with a ``CONFIG`` dict (its own keys on top of
:data:`~fundl.runs.DEFAULTS`) and a function ``experiment(config) -> Experiment``.
Running one (:mod:`fundl.runs._run`) records it in a run directory (:mod:`fundl.runs._rundir`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fundl._core import Layer, Shape
from fundl.distributed._mesh import MeshSpec
from fundl.runs._config import DEFAULTS, Config, merge, override
from fundl.train import EvalFn, Hook, LossFn, TrainState, evaluate
from fundl.train._data import check_batch_size, eval_batch_size_for, num_examples


class Experiment(NamedTuple):
    """What an example gives ``fundl run``: a model, its data and its loss.

    Attributes:
      model: the model to train.
      input_shape: the shape of one training batch's model input, batch axis included.
      loss_fn: ``(params, state, batch, key) -> (loss, (new_state, metrics))``.
      train_data: a pytree of arrays with a leading example axis.
      eval_data: named splits evaluated during training, e.g. ``{"validation": ...}``:
        what the curves show, early stopping watches and the best checkpoint is chosen by.
      test_data: named held-out splits scored once, with the final params, after
        training, e.g. ``{"test": ...}``: nothing during training looks at them, so their
        scores are not tuned on.
      eval_fn: ``(params, state, batch) -> metrics``, if ``loss_fn`` takes no ``train`` keyword.
      hooks: extra hooks for ``fit``.
      report: called with the finished :class:`Run`, e.g. to draw pictures into its directory.
      sample: ``sample(run, prompt, temperature=..., length=..., seed=...) -> str`` for
        generative examples, used by ``fundl sample RUN_DIR``.
    """

    model: Layer
    input_shape: Shape
    loss_fn: LossFn
    train_data: Any
    eval_data: dict[str, Any] | None = None
    test_data: dict[str, Any] | None = None
    eval_fn: EvalFn | None = None
    hooks: Sequence[Hook] = ()
    report: Callable[["Run"], None] | None = None
    sample: Callable[..., str] | None = None


class Run(NamedTuple):
    """A finished (or loaded) run: its directory, config, experiment, final train state and results.

    ``directory`` is ``None`` on the processes of a multi-process run that do not write (all but process 0).
    """

    directory: Path | None
    config: Config
    experiment: Experiment
    train_state: TrainState
    history: dict[str, Any] | None
    summary: dict[str, Any]


def bundled_examples() -> list[str]:
    """The names of the examples that ship with fundl (``fundl run NAME``)."""
    import fundl.examples

    return sorted(m.name for m in pkgutil.iter_modules(fundl.examples.__path__) if not m.name.startswith("_"))


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
            raise ValueError(f"unknown example {name_or_path!r}; bundled examples: {', '.join(available)} (or give a path to a .py file)")
        module = importlib.import_module(f"fundl.examples.{name_or_path}")
    if not isinstance(getattr(module, "CONFIG", None), dict) or not callable(getattr(module, "experiment", None)):
        raise ValueError(f"example {name_or_path!r} must define a CONFIG dict and a function experiment(config) -> Experiment")
    return module


def resolve_config(module: ModuleType, settings: Iterable[tuple[str, Any]] = ()) -> Config:
    """DEFAULTS, then the example's CONFIG, then the ``(dotted_key, value)`` settings."""
    return override(merge(DEFAULTS, module.CONFIG), settings)


def budget(config: Config) -> dict[str, Any]:
    """``fit``'s budget argument from the config: ``{"steps": n}`` or ``{"epochs": n}``."""
    steps = config["train"]["steps"]
    return {"steps": steps} if steps is not None else {"epochs": config["train"]["epochs"]}


def total_steps(config: Config, experiment: Experiment) -> int:
    """The run's length in steps (for learning-rate schedules); checks the batch size first."""
    n, batch_size = num_examples(experiment.train_data, "train data"), config["train"]["batch_size"]
    check_batch_size(batch_size, n, "train data")
    given = budget(config)
    return given["steps"] if "steps" in given else given["epochs"] * (n // batch_size)


def test_metrics(
    experiment: Experiment, loss_fn: LossFn, params: Any, state: Any, *, batch_size: int, eval_batch_size: int | None = None,
    mesh: MeshSpec = 1,
) -> dict[str, dict[str, float]]:
    """The final scores on the experiment's ``test_data``, ``{split: {metric: mean}}``, in batches as ``fit`` evaluates."""
    return {
        name: evaluate(loss_fn, params, state, split, batch_size=eval_batch_size_for(split, eval_batch_size, batch_size), mesh=mesh,
                       eval_fn=experiment.eval_fn)
        for name, split in (experiment.test_data or {}).items()
    }


def _initial_state_fn(experiment: Experiment, optimizer) -> Callable[[Any], TrainState]:
    def make(seed):
        init_key, train_key = jax.random.split(jax.random.key(seed))
        _, params, state = experiment.model.init(init_key, experiment.input_shape)
        return TrainState.create(params, state, optimizer, train_key)

    return make


# The initial state is computed once, so how fast its program runs hardly matters, but
# compiling it with LLVM's optimisations takes ~1.5 s on XLA:CPU for a two-layer MLP
# (threefry's rounds, once per initializer): most of a short run's start. Without them it
# compiles in ~0.3 s. The values are the same up to float rounding (the dense and conv
# layers' bit for bit; normal draws and orthogonal recurrent kernels can differ in the
# last bits), and every run, resume and sweep makes its initial state this same way.
_QUICK_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compiled_once(fn: Callable, *example_args: Any) -> Callable:
    """``fn`` compiled for arguments like these; on the CPU without LLVM's slow optimisations."""
    options = _QUICK_COMPILE if jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*example_args).compile(compiler_options=options)


def initial_train_state(config: Config, experiment: Experiment, optimizer) -> TrainState:
    """The train state at step 0: params from ``split(key(seed))[0]``, training key the other half.

    The whole of it is made by one compiled program (made eagerly, every initializer of
    every layer would be compiled and run on its own: a large part of a short run).
    """
    seed = config["seed"]
    make = _initial_state_fn(experiment, optimizer)
    if seed < 2**32:  # as a uint32 array, jax.random.key gives the key of the Python int
        return _compiled_once(make, np.uint32(seed))(np.uint32(seed))
    return jax.jit(make, static_argnums=0)(seed)


def initial_train_states(seeds: Sequence[int], experiment: Experiment, optimizer) -> TrainState:
    """:func:`initial_train_state` for each seed (below 2**32), stacked on a leading axis."""
    if max(seeds) >= 2**32:
        raise ValueError(f"the seeds of a sweep must be below 2**32, got {max(seeds)}")
    make = _compiled_once(_initial_state_fn(experiment, optimizer), np.uint32(0))  # compiled once, called per seed
    states = [make(np.uint32(seed)) for seed in seeds]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
