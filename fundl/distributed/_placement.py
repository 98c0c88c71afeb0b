"""Where ``fit``'s arrays live: on one device, or laid out over a mesh.

A :class:`Placement` answers three questions for the training loop, so that the loop
itself never speaks of devices: how the train state is laid out (replicated, or cut
along one dimension over the ``fsdp`` axis), which rows of each global batch this
process feeds, and how a host batch becomes a global array cut along the ``data`` axis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fundl.distributed._mesh import FSDP


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def fsdp_spec(shape: tuple[int, ...], size: int) -> P:
    """Cuts an array along its largest dimension that ``size`` divides (replicated if none does)."""
    dims = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d]) if shape[d] % size == 0 and shape[d] >= size]
    if size == 1 or not dims:
        return P()
    return P(*(FSDP if d == dims[0] else None for d in range(len(shape))))


def nearest_multiples(value: int, divisor: int) -> list[int]:
    """The multiples of ``divisor`` just below and above ``value`` (positive ones only)."""
    below = value - value % divisor
    return [m for m in (below, below + divisor) if m > 0]


class Placement:
    """The layout of a training run on one device (``mesh=None``) or over a mesh.

    Attributes:
      mesh: the mesh, or ``None`` for one device.
      shards: how many pieces each batch is cut into (every device of the mesh).
    """

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.shards = 1 if mesh is None else mesh.size
        if mesh is not None:
            axes = tuple(mesh.axis_names)
            self._batch_axes = axes if len(axes) > 1 else axes[0]
            self._fsdp = dict(zip(mesh.axis_names, mesh.devices.shape)).get(FSDP, 1)
            self.replicated = NamedSharding(mesh, P())

    def context(self) -> contextlib.AbstractContextManager:
        """The mesh as JAX's current mesh (needed by meshes with ``Explicit`` axes)."""
        if self.mesh is None:
            return contextlib.nullcontext()
        return jax.set_mesh(self.mesh)

    # --- the train state -------------------------------------------------------------------

    def state_shardings(self, tree: Any) -> Any:
        """A ``NamedSharding`` for every leaf: replicated, or cut over ``fsdp`` (keys never are)."""
        mesh = self.mesh
        if mesh is None:
            return None
        return jax.tree.map(
            lambda leaf: self.replicated if _is_key(leaf) else NamedSharding(mesh, fsdp_spec(np.shape(leaf), self._fsdp)),
            tree,
        )

    def place_state(self, tree: Any) -> Any:
        """A copy of ``tree`` laid out for training.

        Always a copy: the compiled step donates (reuses) its input buffers, and a
        ``device_put`` can share the caller's buffers, which would then be deleted.
        """
        if self.mesh is None:
            return jax.device_put(tree, may_alias=False)  # a copy, and nothing to compile
        return jax.tree.map(_copy_to, tree, self.state_shardings(tree))

    # --- batches ---------------------------------------------------------------------------

    def check_batch_size(self, batch_size: int, what: str) -> None:
        """A batch must cut evenly into one piece per device."""
        if batch_size % self.shards:
            assert self.mesh is not None  # one device (one shard) takes any batch size
            sizes = " or ".join(str(m) for m in nearest_multiples(batch_size, self.shards))
            raise ValueError(
                f"the {what} batch size {batch_size} does not divide into the {self.shards} data shards of the mesh "
                f"{dict(zip(self.mesh.axis_names, self.mesh.devices.shape))}: use a multiple of {self.shards} "
                f"(e.g. {sizes}), or fewer devices"
            )

    def local_rows(self, batch_size: int) -> slice:
        """The rows of every global batch of ``batch_size`` that this process feeds."""
        if self.mesh is None or jax.process_count() == 1:
            return slice(0, batch_size)
        sharding = NamedSharding(self.mesh, P(self._batch_axes))
        indices = sharding.devices_indices_map((batch_size,))
        spans = {indices[device][0].indices(batch_size)[:2] for device in sharding.addressable_devices}
        start, stop = min(s for s, _ in spans), max(e for _, e in spans)
        if sum(e - s for s, e in spans) != stop - start:
            raise ValueError(f"process {jax.process_index()}'s devices do not hold one contiguous block of the batch")
        return slice(start, stop)

    def batch(self, local: Any, batch_size: int, stacked: bool = False) -> Any:
        """A global batch from this process's rows ``local``: leaves ``([steps,] batch, ...)``.

        On one CPU device the NumPy arrays are handed to the compiled call as they are
        (faster than an explicit copy); elsewhere they are sent to the device(s).
        """
        if self.mesh is None:
            return local if jax.default_backend() == "cpu" else jax.device_put(local)
        spec = P(None, self._batch_axes) if stacked else P(self._batch_axes)
        sharding = NamedSharding(self.mesh, spec)

        def place(a: np.ndarray) -> jax.Array:
            shape = (*a.shape[:1], batch_size, *a.shape[2:]) if stacked else (batch_size, *a.shape[1:])
            return jax.make_array_from_process_local_data(sharding, a, shape)

        return jax.tree.map(place, local)

    def resident(self, data: Any) -> Any:
        """The whole of ``data`` on every device, once (training gathers its batches there)."""
        if self.mesh is None:
            return jax.device_put(data)
        return self.replicate(data)

    def replicate(self, host: Any) -> Any:
        """The same host arrays on every device of the mesh (a batch too small to cut)."""
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(self.replicated, a, a.shape), host)

    def eval_batches(self, data: Any, batch_size: int) -> Iterator[tuple[Any, int]]:
        """Every example of ``data`` once, as ``(global batch, size)``.

        Each batch is cut over the devices; the last few examples that do not fill one
        row per device go as a separate replicated batch, so no example is padded or
        repeated and the means stay exact.
        """
        size = jax.tree.leaves(data)[0].shape[0]
        for start in range(0, size, batch_size):
            stop = min(start + batch_size, size)
            whole = stop - (stop - start) % self.shards
            if whole > start:
                rows = self.local_rows(whole - start)
                part = jax.tree.map(lambda a: a[start + rows.start : start + rows.stop], data)
                yield self.batch(part, whole - start), whole - start
            if stop > whole:
                yield self.replicate(jax.tree.map(lambda a: a[whole:stop], data)), stop - whole


def _copy_to(leaf: Any, sharding: NamedSharding) -> Any:
    """A fresh copy of ``leaf`` with ``sharding`` (PRNG keys through their raw data)."""
    if _is_key(leaf):
        return jax.random.wrap_key_data(_copy_to(jax.random.key_data(leaf), sharding), impl=jax.random.key_impl(leaf))
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.jit(jnp.copy, out_shardings=sharding)(leaf)
    return jax.device_put(np.array(leaf, copy=True), sharding)
