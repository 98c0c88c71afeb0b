"""A run's identity, sealed when it starts and checked by every reader.

What a run *is* (what its params are a function of) is fixed when it starts: its run id,
its resolved config, its example's source (the SHA-256 of the copy in the directory), its
data (a digest of each split, where the data is held in memory) and, for a sweep, its seeds
and settings. ``identity.json`` records these values and the SHA-256 of them all::

    {"run_id": "...", "digest": "<sha256 of the identity>", "identity": {"run_id", "config",
     "example_sha256", "data", "sweep"}}

Every reader (``fundl resume``, ``load_run``, ``fundl show/ls/compare``) compares the
directory's files with it: an edited ``config.json`` (``"seed": 7`` made 8, a longer
``train.epochs``), a replaced ``example.py`` or a sweep's changed members is an error naming
the key and both values, instead of params that no config reproduces. A run is sealed
before it trains; a directory without ``identity.json`` stopped while it was starting and
trained nothing.

Nothing here starts JAX: the data's digest is computed by the caller (:func:`data_identity`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fundl.runs._config import flat_keys
from fundl.runs._directory import RunDirectory
from fundl.runs._files import read_json, write_json

NAME = RunDirectory.IDENTITY
_HASHED_BYTES = 1 << 30  # data held in memory up to this size is hashed whole; beyond, its shapes and a sample


class IdentityError(ValueError):
    """A file of a run directory no longer matches the identity the run was sealed with."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _split_digest(split: Any) -> str:
    """The SHA-256 of a split's arrays (paths, dtypes, shapes and bytes), or of its type if it holds none."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(split)[0]
    digest = hashlib.sha256()
    total = 0
    for path, leaf in leaves:
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            digest.update(f"{jax.tree_util.keystr(path)}:{type(leaf).__name__}".encode())
            continue
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        total += array.nbytes
        data = np.ascontiguousarray(array) if total <= _HASHED_BYTES else np.ascontiguousarray(array.reshape(-1)[:4096])
        digest.update(data.data)
    return digest.hexdigest()


def data_identity(experiment: Any) -> dict[str, str]:
    """``{split: digest}`` of the experiment's training, evaluation and test data.

    A data source may say who it is itself: an object with an ``identity()`` method (e.g. a
    file's path and version) is recorded by what that returns.
    """
    splits = {"train": experiment.train_data, **(experiment.eval_data or {}), **(experiment.test_data or {})}
    out = {}
    for name, split in splits.items():
        identify = getattr(split, "identity", None)
        out[name] = str(identify()) if callable(identify) else _split_digest(split)
    return out


def identity(
    run_id: str,
    config: Mapping[str, Any],
    example_sha256: str,
    data: Mapping[str, str] | None,
    sweep: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The identity of a run, as ``identity.json`` holds it."""
    return {
        "run_id": run_id,
        "config": flat_keys(config),
        "example_sha256": example_sha256,
        "data": dict(data) if data is not None else None,
        "sweep": dict(sweep) if sweep is not None else None,
    }


def seal(directory: Path, sealed: dict[str, Any]) -> None:
    """Writes ``identity.json``: the run's identity and its digest."""
    digest = hashlib.sha256(_canonical(sealed)).hexdigest()
    write_json(Path(directory) / NAME, {"run_id": sealed["run_id"], "digest": digest, "identity": sealed})


def is_sealed(directory: Path) -> bool:
    return (Path(directory) / NAME).is_file()


def read_sealed(directory: Path) -> dict[str, Any]:
    """The identity a run was sealed with, checked against its own digest."""
    path = Path(directory) / NAME
    if not path.is_file():
        raise IdentityError(
            f"{path} is missing: the run stopped while it was starting, before its identity was sealed, "
            f"and trained nothing: `fundl run --out {path.parent}` may reuse the directory"
        )
    value = read_json(path)
    sealed = value.get("identity") if isinstance(value, dict) else None
    if not isinstance(sealed, dict) or hashlib.sha256(_canonical(sealed)).hexdigest() != value.get("digest"):
        raise IdentityError(f"{path} was edited or damaged: its identity does not match its digest")
    return sealed


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def check(directory: Path, current: dict[str, Any], *, with_data: bool = True) -> dict[str, Any]:
    """Compares a run directory's files (``current``, an :func:`identity`) with its sealed identity.

    Args:
      directory: the run directory.
      current: the identity its files describe now.
      with_data: also compare the data's digests (``False`` for readers that do not load the data).

    Returns:
      The sealed identity.

    Raises:
      IdentityError: naming the first value that differs, and both values.
    """
    directory = Path(directory)
    sealed = read_sealed(directory)
    if current["run_id"] != sealed["run_id"]:
        raise IdentityError(
            f"{directory}: environment.json names run {current['run_id']!r}, but the run was sealed as "
            f"{sealed['run_id']!r} ({NAME}): files were copied from another run"
        )
    now, then = current["config"], sealed["config"]
    config = directory / RunDirectory.CONFIG
    for key in dict.fromkeys([*then, *now]):
        if key not in then:
            raise IdentityError(
                f"{config}: {key} is {_shown(now[key])}, but the run was started without {key} (sealed in {NAME}): "
                f"a run's config cannot change after it starts; remove {key}"
            )
        if key not in now:
            raise IdentityError(
                f"{config}: {key} is missing, but the run was started with {key}={_shown(then[key])} "
                f"(sealed in {NAME}): restore it"
            )
        if now[key] != then[key]:
            was, got = _shown(then[key]), _shown(now[key])
            raise IdentityError(
                f"{config}: {key} is {got}, but the run was started with {key}={was} (sealed in {NAME}): a run's "
                f"config cannot change after it starts. Restore {key}={was}; to train with {key}={got}, start a new "
                f"run (fundl run ... --set {key}={got})"
            )
    if current["example_sha256"] != sealed["example_sha256"]:
        raise IdentityError(
            f"{directory / 'example.py'} differs from the example the run was started with: its SHA-256 is "
            f"{current['example_sha256']}, sealed {sealed['example_sha256']} ({NAME})"
        )
    if current["sweep"] != sealed["sweep"]:
        raise IdentityError(
            f"{directory / 'environment.json'}: the sweep is {_shown(current['sweep'])}, but the run was started as "
            f"{_shown(sealed['sweep'])} (sealed in {NAME})"
        )
    if with_data and current["data"] is not None and current["data"] != sealed["data"]:
        now_data, then_data = current["data"], sealed["data"] or {}
        for split in dict.fromkeys([*then_data, *now_data]):
            if now_data.get(split) != then_data.get(split):
                raise IdentityError(
                    f"{directory}: the example's {split!r} data is not the data the run was started with "
                    f"(its digest is {now_data.get(split)}, sealed {then_data.get(split)}): the dataset or the "
                    "example's data preparation changed; train a new run on this data"
                )
    return sealed
