"""Equality by what a function computes, where that can be decided: the key of ``fit``'s compile cache.

A notebook cell that builds ``optax.sgd(0.1)`` or ``classification_loss(model)`` again
makes new function objects, which Python compares by identity, so a cache keyed on them
would compile again (~2 s each). :func:`structural_key` compares what decides the
computation instead:

- a Python function by its code, its closure's contents, its defaults and the globals its
  code names (recursively);
- numbers and strings by value (floats by ``repr``: ``0.0`` and ``-0.0`` differ), NumPy and
  JAX arrays of at most :data:`MAX_ARRAY_BYTES` by dtype, shape and bytes;
- tuples, lists, dicts, named tuples, dataclasses and ``functools.partial`` by their parts;
- modules, classes, and functions and classes defined at the top of an imported module
  (library code) by identity;
- anything else by its own ``==`` if its class defines one and it is hashable, else by
  identity (so an object of a class of one's own that defines no ``==`` never matches a rebuilt
  one: the cache then compiles again, which is always safe).

Two values with equal keys compute the same thing, so they may share compiled programs.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
from typing import Any

import jax
import numpy as np

MAX_ARRAY_BYTES = 1 << 20  # larger arrays are compared by identity (hashing them would cost more than it saves)
MAX_NODES = 20_000  # a value larger than this is compared by identity


class _Same:
    """Compares by identity (and keeps the object alive, so that its id is not reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        return f"same({type(self.obj).__name__} at {id(self.obj):#x})"


class _TooLarge(Exception):
    pass


def _library(value: Any) -> bool:
    """A function or class defined at the top of an imported module other than ``__main__`` (a library's)."""
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    if module is None or module.__name__ == "__main__" or not getattr(module, "__file__", None):
        return False
    return getattr(module, getattr(value, "__qualname__", ""), None) is value


def _names(code: types.CodeType) -> set[str]:
    """The global names ``code`` (and the functions defined inside it) may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


class _Keys:
    def __init__(self) -> None:
        self.nodes = 0
        self.path: dict[int, int] = {}  # the objects being keyed, outermost first: a cycle refers back by depth

    def __call__(self, obj: Any) -> Any:  # noqa: C901  (one branch per kind of value, in one place)
        if obj is None or isinstance(obj, (bool, int, str, bytes, complex)):
            return (type(obj), obj)
        if isinstance(obj, float):
            return (float, repr(obj))
        if isinstance(obj, (types.ModuleType, type)) or isinstance(obj, jax.core.Tracer):
            return _Same(obj)
        if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
            if obj.nbytes > MAX_ARRAY_BYTES:
                return _Same(obj)
            array = np.asarray(obj)
            return ("array", str(array.dtype), array.shape, array.tobytes())
        if id(obj) in self.path:
            return ("cycle", self.path[id(obj)])
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge
        self.path[id(obj)] = len(self.path)
        try:
            return self._composite(obj)
        finally:
            del self.path[id(obj)]

    def _composite(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            return self._function(obj)
        if isinstance(obj, types.MethodType):
            return ("method", self(obj.__func__), self(obj.__self__))
        if isinstance(obj, functools.partial):
            return ("partial", self(obj.func), self(obj.args), self(obj.keywords))
        if isinstance(obj, (tuple, list)):
            return (type(obj), tuple(self(item) for item in obj))
        if isinstance(obj, dict):
            return (type(obj), tuple((self(k), self(v)) for k, v in obj.items()))
        if dataclasses.is_dataclass(obj):
            return (type(obj), tuple(self(getattr(obj, f.name)) for f in dataclasses.fields(obj)))
        if type(obj).__eq__ is not object.__eq__:
            try:
                hash(obj)
                return ("value", type(obj), obj)
            except TypeError:
                pass
        return _Same(obj)

    def _function(self, fn: types.FunctionType) -> Any:
        if _library(fn):
            return _Same(fn)
        cells = tuple(self(cell.cell_contents) if _full(cell) else ("empty",) for cell in fn.__closure__ or ())
        named = {}
        for name in sorted(_names(fn.__code__)):
            if name in fn.__globals__:
                value = fn.__globals__[name]
                named[name] = _Same(value) if _library(value) else self(value)
        return (
            "function",
            fn.__code__,
            cells,
            self(fn.__defaults__),
            self(fn.__kwdefaults__),
            tuple(named.items()),
        )


def _full(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a cell not filled yet
        return False
    return True


def structural_key(obj: Any) -> Any:
    """A hashable key of ``obj`` that is equal for values that compute the same thing (see the module's rules)."""
    try:
        return _Keys()(obj)
    except _TooLarge:
        return _Same(obj)


class Structural:
    """``value`` (a function, a loss, a population), compared and hashed by :func:`structural_key`: a static
    argument of ``jax.jit`` or a cache key that a rebuilt equal value finds again. Calling it calls ``value``."""

    __slots__ = ("value", "_key", "_hash")

    def __init__(self, value: Any):
        self.value = value
        self._key = structural_key(value)
        self._hash = hash(self._key)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.value(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Structural) and self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash
