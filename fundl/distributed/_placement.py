"""Where training's arrays live: on one device, or laid out over a mesh, for one run or a population.

A :class:`Placement` answers the loop's questions about devices, so that the loop itself
never speaks of them: how the train state is laid out (replicated, or cut along one
dimension over the ``fsdp`` axis), which rows of each global batch this process feeds,
and how a host batch becomes a global array cut along the ``data`` axis.

A population of ``M`` members (a sweep) stacks every array on a leading member axis.
On a mesh without an ``fsdp`` axis whose size divides ``M``, the members are spread over
the ``data`` axis (each device trains its share of members on whole batches); otherwise
every member is laid out as a single run would be, and the member axis is not cut.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fundl._data import num_examples, rows
from fundl.distributed._mesh import DATA, FSDP


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


@dataclasses.dataclass(frozen=True)
class Placement:
    """The layout of a training run, or of a population of ``members`` runs, on ``mesh``.

    Attributes:
      mesh: the devices; a one-device mesh places nothing (arrays stay where JAX puts them).
      members: the population's size, or ``None`` for a single run (no member axis).
    """

    mesh: Mesh
    members: int | None = None

    @property
    def sharded(self) -> bool:
        return self.mesh.size > 1

    @property
    def axes(self) -> dict[str, int]:
        return dict(zip(self.mesh.axis_names, self.mesh.devices.shape))

    @property
    def member_axis(self) -> str | None:
        """The mesh axis the members are spread over, if any."""
        spread = (
            self.sharded and self.members is not None and FSDP not in self.axes and self.members % self.mesh.size == 0
        )
        return DATA if spread else None

    @property
    def shards(self) -> int:
        """How many pieces each batch's rows are cut into."""
        return 1 if self.member_axis or not self.sharded else self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def _batch_axes(self) -> Any:
        axes = tuple(self.mesh.axis_names)
        return axes if len(axes) > 1 else axes[0]

    def _rows_spec(self, leading: int) -> P:
        """A batch with ``leading`` axes before its rows (steps, members), its rows cut over the mesh."""
        if self.member_axis:  # (steps, members, rows): the members over the data axis, rows whole
            return P(*([None] * (leading - 1)), self.member_axis)
        return P(*([None] * leading), self._batch_axes())

    def context(self) -> contextlib.AbstractContextManager:
        """The mesh as JAX's current mesh (needed by meshes with ``Explicit`` axes)."""
        return jax.set_mesh(self.mesh) if self.sharded else contextlib.nullcontext()

    # --- the train state -------------------------------------------------------------------

    def _leaf_sharding(self, leaf: Any) -> NamedSharding:
        shape = np.shape(leaf)
        if self.members is None:
            return (
                self.replicated if _is_key(leaf) else NamedSharding(self.mesh, fsdp_spec(shape, self.axes.get(FSDP, 1)))
            )
        if self.member_axis or _is_key(leaf):
            return NamedSharding(self.mesh, P(self.member_axis))
        return NamedSharding(self.mesh, P(None, *fsdp_spec(shape[1:], self.axes.get(FSDP, 1))))

    def state_shardings(self, tree: Any) -> Any:
        """A ``NamedSharding`` per leaf (``None`` on one device): replicated, cut over ``fsdp``, or over members."""
        return jax.tree.map(self._leaf_sharding, tree) if self.sharded else None

    def place_state(self, tree: Any) -> Any:
        """A copy of ``tree`` laid out for training.

        Always a copy: the compiled step donates (reuses) its input buffers, and a
        ``device_put`` can share the caller's buffers, which would then be deleted.
        """
        if not self.sharded:
            return jax.device_put(tree, may_alias=False)  # a copy, and nothing to compile
        return jax.tree.map(_copy_to, tree, self.state_shardings(tree))

    # --- batches ---------------------------------------------------------------------------

    def check_batch_size(self, batch_size: int, what: str) -> None:
        """A batch must cut evenly into one piece per device."""
        if batch_size % self.shards:
            sizes = " or ".join(str(m) for m in nearest_multiples(batch_size, self.shards))
            raise ValueError(
                f"the {what} batch size {batch_size} does not divide into the {self.shards} data shards of the mesh "
                f"{self.axes}: use a multiple of {self.shards} (e.g. {sizes}), or fewer devices"
            )

    def local_rows(self, batch_size: int) -> slice:
        """The rows of every global batch of ``batch_size`` that this process feeds."""
        if not self.sharded or jax.process_count() == 1:
            return slice(0, batch_size)
        sharding = NamedSharding(self.mesh, P(self._batch_axes()))
        indices = sharding.devices_indices_map((batch_size,))
        spans = {indices[device][0].indices(batch_size)[:2] for device in sharding.addressable_devices}
        start, stop = min(s for s, _ in spans), max(e for _, e in spans)
        if sum(e - s for s, e in spans) != stop - start:
            raise ValueError(f"process {jax.process_index()}'s devices do not hold one contiguous block of the batch")
        return slice(start, stop)

    def batch(self, local: Any, batch_size: int, leading: int = 0) -> Any:
        """A global batch from this process's rows ``local``: leaves ``(*leading axes, batch, ...)``.

        ``leading`` counts the axes before the rows: the steps of a fused call, the members of
        a population. On one CPU device the NumPy arrays are handed to the compiled call as
        they are (faster than an explicit copy); elsewhere they are sent to the device(s).
        """
        if not self.sharded:
            return local if jax.default_backend() == "cpu" else jax.device_put(local)
        sharding = NamedSharding(self.mesh, self._rows_spec(leading))

        def place(a: np.ndarray) -> jax.Array:
            return jax.make_array_from_process_local_data(
                sharding, a, (*a.shape[:leading], batch_size, *a.shape[leading + 1 :])
            )

        return jax.tree.map(place, local)

    def resident(self, data: Any) -> Any:
        """The whole of ``data`` on every device, once (training gathers its batches there)."""
        return self.replicate(data) if self.sharded else jax.device_put(data)

    def replicate(self, host: Any) -> Any:
        """The same host arrays on every device of the mesh (a batch too small to cut)."""
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(self.replicated, a, a.shape), host)

    def eval_batches(self, data: Any, batch_size: int) -> Iterator[tuple[Any, int]]:
        """Every example of ``data`` once, as ``(global batch, size)``; a population shares each batch.

        Each batch is cut over the devices; the last few examples that do not fill one
        row per device go as a separate replicated batch, so no example is padded or
        repeated and the means stay exact. Each process reads only its rows (of a source too).
        """
        size = num_examples(data)
        shards = 1 if not self.sharded else self.mesh.size
        for start in range(0, size, batch_size):
            stop = min(start + batch_size, size)
            whole = stop - (stop - start) % shards
            if whole > start and self.sharded and not self.member_axis:
                local = self.local_rows(whole - start)
                part = rows(data, start + local.start, start + local.stop)
                yield Placement(self.mesh).batch(part, whole - start), whole - start
            elif whole > start:
                part = rows(data, start, whole)
                yield (self.replicate(part) if self.sharded else self.batch(part, whole - start)), whole - start
            if stop > whole:
                yield self.replicate(rows(data, whole, stop)), stop - whole


def _copy_to(leaf: Any, sharding: NamedSharding) -> Any:
    """A fresh copy of ``leaf`` with ``sharding`` (PRNG keys through their raw data)."""
    if _is_key(leaf):
        return jax.random.wrap_key_data(_copy_to(jax.random.key_data(leaf), sharding), impl=jax.random.key_impl(leaf))
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.jit(jnp.copy, out_shardings=sharding)(leaf)
    return jax.device_put(np.array(leaf, copy=True), sharding)


def key_data(tree: Any) -> Any:
    """``tree`` with every typed PRNG key replaced by its raw ``uint32`` data, which serializes."""
    return jax.tree.map(lambda leaf: jax.random.key_data(leaf) if _is_key(leaf) else leaf, tree)


def wrap_keys(tree: Any, like: Any) -> Any:
    """The inverse of :func:`key_data`: the leaves that are keys in ``like`` wrapped back as keys of their kind."""

    def wrap(leaf: Any, target: Any) -> Any:
        if not _is_key(target):
            return leaf
        impl = jax.random.key_impl(target) if isinstance(target, jax.Array) else None  # None: JAX's default
        return jax.random.wrap_key_data(leaf, impl=impl)

    return jax.tree.map(wrap, tree, like)


def host_copy(tree: Any) -> Any:
    """The whole of ``tree`` as fresh NumPy arrays, keys as raw key data.

    A copy, never a view: the training step reuses (donates) the device buffers, and on
    the CPU a NumPy view of them would change under a writer. Arrays spread over several
    processes are gathered: then every process must call it (a collective).
    """
    raw = key_data(tree)
    if any(isinstance(leaf, jax.Array) and not leaf.is_fully_addressable for leaf in jax.tree.leaves(raw)):
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(raw, tiled=True))
    return jax.tree.map(lambda leaf: np.array(leaf, copy=True), jax.device_get(raw))
