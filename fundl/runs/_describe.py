"""What a config means, read from source: ``fundl config EXAMPLE`` and ``fundl list`` without running anything.

The meaning of a key is the comment written beside it: in :data:`fundl.runs.DEFAULTS` for
the keys every run has, in the example's ``CONFIG`` for its own (a comment on the key's
line, or on the line above it). An example's ``CONFIG`` and docstring are read from its
file with ``ast``, without importing it (importing an example imports JAX, which takes
seconds); a ``CONFIG`` that is not a plain literal is imported after all.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import pkgutil
import tokenize
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fundl.runs import _config
from fundl.runs._config import Config, flat_keys, resolve, type_name

NO_MEANING = "(not described: comment the key in the example's CONFIG)"


def bundled_examples() -> list[str]:
    """The names of the examples that ship with fundl (``fundl run NAME``)."""
    import fundl.examples

    return sorted(m.name for m in pkgutil.iter_modules(fundl.examples.__path__) if not m.name.startswith("_"))


def example_file(name_or_path: str) -> Path:
    """The source file of a bundled example (by name) or of an example file (by path)."""
    path = Path(name_or_path)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"example file {path} does not exist")
        return path
    spec = importlib.util.find_spec(f"fundl.examples.{name_or_path}") if name_or_path.isidentifier() else None
    if spec is None or spec.origin is None:
        raise ValueError(
            f"unknown example {name_or_path!r}; bundled examples: "
            f"{', '.join(bundled_examples())} (or give a path to a .py file)"
        )
    return Path(spec.origin)


def _assignment(tree: ast.Module, variable: str) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == variable for t in node.targets):
            return node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == variable:
            return node.value
    return None


def comments(source: str, variable: str) -> dict[str, str]:
    """``{dotted key: comment}`` for the dict literal assigned to ``variable`` in ``source``.

    A key's comment is the one at the end of its line (when it is the only key on that line
    and its value ends there), else a comment alone on the line above it.
    """
    value = _assignment(ast.parse(source), variable)
    if not isinstance(value, ast.Dict):
        return {}
    trailing: dict[int, str] = {}
    alone: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            (alone if token.line.strip().startswith("#") else trailing)[token.start[0]] = text
    found: dict[str, str] = {}

    def walk(node: ast.Dict, prefix: str) -> None:
        per_line = Counter(key.lineno for key in node.keys if key is not None)
        for key, item in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                continue
            path = prefix + key.value
            if isinstance(item, ast.Dict) and item.keys:
                walk(item, path + ".")
            elif per_line[key.lineno] == 1 and item.end_lineno == key.lineno and key.lineno in trailing:
                found[path] = trailing[key.lineno]
            elif key.lineno - 1 in alone:
                found[path] = alone[key.lineno - 1]

    walk(value, "")
    return found


@functools.cache
def default_meanings() -> dict[str, str]:
    """The meaning of every key of :data:`~fundl.runs.DEFAULTS`: the comments beside it in ``_config.py``."""
    return comments(Path(_config.__file__).read_text(), "DEFAULTS")


def example_config(path: Path) -> dict[str, Any]:
    """An example's ``CONFIG``, read as a literal from its source (imported only if it is not a plain literal)."""
    value = _assignment(ast.parse(path.read_text()), "CONFIG")
    if value is not None:
        try:
            config = ast.literal_eval(value)
        except ValueError:
            config = None
        if isinstance(config, dict):
            return config
    from fundl.runs._experiment import load_example

    return load_example(str(path)).CONFIG


def summary_line(path: Path) -> str:
    """The first line of an example's docstring."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def config_rows(config: Config, example_meanings: dict[str, str]) -> list[tuple[str, str, Any, str]]:
    """``(key, type, value, meaning)`` for every key of a resolved config, in its order."""
    defaults = flat_keys(_config.DEFAULTS)
    rows = []
    for key, value in flat_keys(config).items():
        meaning = example_meanings.get(key) or default_meanings().get(key) or NO_MEANING
        rows.append((key, type_name(key, defaults.get(key, value)), value, meaning))
    return rows


def _shown(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def show_config(example: str | None = None, settings: Iterable[tuple[str, Any]] = ()) -> str:
    """What ``fundl config [EXAMPLE] [--set KEY=VALUE ...]`` prints: every key of the example's config (of the
    defaults, without one) with its type, its value (after the settings) and its meaning."""
    if example is None:
        config, meanings, title = resolve({}, settings), {}, "the defaults of every run"
    else:
        path = example_file(example)
        own = example_config(path)
        config, meanings, title = resolve(own, settings), comments(path.read_text(), "CONFIG"), example
    rows = [("KEY", "TYPE", "VALUE", "MEANING")] + [
        (key, kind, _shown(value), meaning) for key, kind, value, meaning in config_rows(config, meanings)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{title}: every config key, its type, value and meaning; set one with --set KEY=VALUE", ""]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    return "\n".join(lines)
