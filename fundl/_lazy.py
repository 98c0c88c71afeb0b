"""Lazy re-exports: a package's table of contents that imports nothing until a name is used.

``import fundl`` (and the command line's ``fundl ls``) must not start JAX, which takes
seconds. A package lists its re-exports once, as ordinary imports inside an
``if TYPE_CHECKING:`` block, so that they read as a table of contents and type checkers,
IDEs and the API docs generator see them; :func:`exports` reads that block from the
package's source and imports each name's module on first use::

    if TYPE_CHECKING:
        from fundl._combinators import serial as serial

    __getattr__, __dir__, __all__ = exports(__name__, __file__)
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def table(init_file: str) -> dict[str, tuple[str, str]]:
    """``{exported name: (module, name in that module)}`` from the ``if TYPE_CHECKING:`` imports of ``init_file``."""
    names: dict[str, tuple[str, str]] = {}
    for node in ast.parse(Path(init_file).read_text()).body:
        if not (isinstance(node, ast.If) and _is_type_checking(node.test)):
            continue
        for statement in node.body:
            if isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
                for alias in statement.names:
                    names[alias.asname or alias.name] = (statement.module, alias.name)
    return names


def exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The package's module ``__getattr__`` and ``__dir__``, and its ``__all__``, from its ``TYPE_CHECKING`` imports.

    Args:
      package: the package's ``__name__``.
      init_file: its ``__file__`` (the ``__init__.py`` holding the imports).
    """
    names = table(init_file)
    module = importlib.import_module(package)

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        source, attribute = names[name]
        if source == package:  # ``from fundl import datasets``: a subpackage
            value = importlib.import_module(f"{package}.{attribute}")
        else:
            value = getattr(importlib.import_module(source), attribute)
        setattr(module, name, value)  # the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *names})

    return __getattr__, __dir__, sorted(names)
