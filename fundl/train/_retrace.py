"""The recompilation guard: counts traces of a compiled function and explains extra ones.

``jax.jit`` traces (and compiles) a function again whenever an argument's shape, dtype or
weak type changes. In a training loop that is almost always a bug that costs a compile
per step. The guard wraps the Python function before ``jax.jit``: its body runs once per
trace, so it can count traces and, past the expected number, say which argument changed.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax


class RetraceError(RuntimeError):
    """A compiled function was traced more often than expected, in strict mode."""


class RetraceWarning(UserWarning):
    """A compiled function was traced more often than expected."""


def _signature(names: Sequence[str], args: tuple) -> dict[str, str]:
    """Each leaf's path and abstract type, e.g. ``{"batch['image']": "float32[32,64]"}`` (``~`` = weak)."""
    leaves = jax.tree_util.tree_flatten_with_path(dict(zip(names, args)))[0]
    return {jax.tree_util.keystr(path): str(jax.typeof(leaf)) for path, leaf in leaves}


class TraceGuard:
    """Counts the traces of ``fn`` and warns (or raises, if ``strict``) past ``expected``.

    Attributes:
      traces: how many times the wrapped function was traced so far.
    """

    def __init__(self, name: str, arg_names: Sequence[str], expected: int = 1, strict: bool = False):
        self.name, self.arg_names, self.expected, self.strict = name, tuple(arg_names), expected, strict
        self.traces = 0
        self._seen: list[dict[str, str]] = []

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def traced(*args: Any) -> Any:
            signature = _signature(self.arg_names, args)
            self.traces += 1
            if self.traces > self.expected:
                self._complain(signature)
            self._seen.append(signature)
            return fn(*args)

        return traced

    def _complain(self, signature: dict[str, str]) -> None:
        previous = self._seen[-1]
        changes = [
            f"{path} changed from {previous.get(path, 'nothing')} to {signature.get(path, 'nothing')}"
            for path in dict.fromkeys([*previous, *signature])
            if previous.get(path) != signature.get(path)
        ]
        message = (
            f"{self.name} was traced and compiled again (trace {self.traces}, expected {self.expected}) because "
            + ("; ".join(changes) if changes else "a static argument or closed-over value changed")
            + ". Each new shape, dtype or weak type costs a compilation: keep them fixed from step to step."
        )
        if self.strict:
            raise RetraceError(message)
        warnings.warn(message, RetraceWarning, stacklevel=3)
