"""``summary``: a table of a model's layers, output shapes and parameter counts."""

from __future__ import annotations

import jax

from fundl._combinators import recording
from fundl._core import Layer, Shape, num_elements


def summary(model: Layer, input_shape: Shape, *, key: jax.Array | None = None) -> str:
    """Describes ``model`` for inputs of ``input_shape`` without computing anything.

    Initialisation runs abstractly under ``jax.eval_shape``, so even a large model is
    summarised instantly and no memory is allocated for its weights.

    Returns:
      A table with one row per layer (its path in the params tree, output shape and
      number of parameters, children counted in their parent's row too), then the totals.

    Example:
      >>> print(summary(serial(dense(100), tanh(), dense(10)), (32, 64)))
    """
    rows: list = []
    out_shape: list = []

    def init(key):
        with recording() as recorded:
            shape, params, state = model.init(key, input_shape)
        rows.extend(recorded)
        out_shape.append(shape)
        return params, state

    params, state = jax.eval_shape(init, jax.random.key(0) if key is None else key)
    n_params, n_state = num_elements(params), num_elements(state)
    if not rows:
        rows = [((model.name,), out_shape[0], n_params)]

    table = [("layer", "output shape", "params")]
    table += [("/".join(path), str(shape), f"{count:,}") for path, shape, count in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    rule = "-" * (sum(widths) + 4)

    def line(row):
        return f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}"

    lines = [line(table[0]), rule, *map(line, table[1:]), rule]
    lines.append(f"total params: {n_params:,} ({_nbytes(params)})")
    if n_state:
        lines.append(f"total state: {n_state:,} ({_nbytes(state)}, not trained)")
    return "\n".join(lines)


def _nbytes(tree) -> str:
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    raise AssertionError("unreachable")
