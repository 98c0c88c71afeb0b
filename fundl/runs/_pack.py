"""An example's data as ArrayRecord files: written once (``fundl data pack``), read by runs with ``data.records``.

``fundl data pack mlp_digits DIR`` writes every split the example trains and evaluates on
(its training data, each ``eval_data`` and ``test_data`` split) to ``DIR/<split>/`` with
:func:`fundl.datasets.write_records`; ``fundl run mlp_digits --set data.records=DIR`` then
reads them from disk, lazily, instead of holding them in memory, and trains to the same
params. The files are checked against the example's own splits (names, fields, shapes,
dtypes, sizes) before anything is trained.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fundl._data import is_source, num_examples
from fundl.runs._config import ConfigError
from fundl.runs._experiment import Experiment, load_example, resolve_config

TRAIN = "train"


def _splits(experiment: Experiment) -> dict[str, Any]:
    return {TRAIN: experiment.train_data, **(experiment.eval_data or {}), **(experiment.test_data or {})}


def pack(
    example: str, settings: Iterable[tuple[str, Any]] = (), out: str = "records", *, shards: int = 1
) -> dict[str, Any]:
    """Writes each split of an example's experiment to ``out/<split>/``; returns each split's metadata."""
    from fundl.datasets import write_records

    module = load_example(example)
    experiment = module.experiment(resolve_config(module, settings))
    written = {}
    for name, split in _splits(experiment).items():
        if is_source(split):
            raise ValueError(f"{example}'s split {name!r} is already read from files; there is nothing to pack")
        written[name] = write_records(Path(out) / name, split, shards=shards)
    return written


def _spec(data: Any) -> str:
    """One example's fields, dtypes and shapes (``image float32[8, 8], label int32[]``), in memory or from a source."""
    example = data[0] if is_source(data) else jax.tree.map(lambda a: np.asarray(a)[0], data)
    leaves = jax.tree_util.tree_flatten_with_path(example)[0]
    return ", ".join(
        f"{jax.tree_util.keystr(path).strip('[]')} {np.asarray(leaf).dtype}{list(np.shape(leaf))}"
        for path, leaf in leaves
    )


def with_records(experiment: Experiment, directory: str) -> Experiment:
    """``experiment`` reading every split from ``directory`` (written by :func:`pack`), after checking each one."""
    from fundl.datasets import records

    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(
            f"data.records={directory}: no such directory; write it with `fundl data pack EXAMPLE {directory}`"
        )
    replaced = {}
    for name, split in _splits(experiment).items():
        if not (root / name).is_dir():
            raise ConfigError(
                f"data.records={directory} has no split {name!r} ({root / name} is missing): "
                f"pack this example's data with `fundl data pack EXAMPLE {directory}`"
            )
        source = records(root / name)
        if _spec(source) != _spec(split) or len(source) != num_examples(split):
            raise ConfigError(
                f"data.records={directory}: {root / name} holds {len(source)} examples of {_spec(source)}, "
                f"the example's {name!r} split {num_examples(split)} of {_spec(split)}: packed from another "
                f"example or config; pack it again"
            )
        replaced[name] = source
    return experiment._replace(
        train_data=replaced[TRAIN],
        eval_data={name: replaced[name] for name in experiment.eval_data or {}} or None,
        test_data={name: replaced[name] for name in experiment.test_data or {}} or None,
    )
