"""Device meshes for data-parallel training: a ``data`` axis, and an optional ``fsdp`` axis.

fundl trains data-parallel by default when more than one device is visible: the global
batch is cut along its example axis over every device of the mesh, the train state is
replicated (or, with ``fsdp > 1``, each large array is cut along one dimension over the
``fsdp`` axis), and one ``jax.jit`` step runs on all devices; XLA inserts the collectives.
The meshes fundl makes use ``Auto`` axes, under which every layer works unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import jax
from jax.sharding import AxisType, Mesh

DATA = "data"  # the mesh axis the batch is cut along
FSDP = "fsdp"  # the mesh axis the parameters are cut along (fully sharded data parallel)

MeshSpec = Mesh | int | Sequence[jax.Device] | None


def data_mesh(devices: int | Sequence[jax.Device] | None = None, *, fsdp: int = 1) -> Mesh:
    """A mesh for data-parallel training over ``devices`` (default: every device).

    Args:
      devices: how many of ``jax.devices()`` to use (the first ones), or the devices.
      fsdp: the size of a second axis, ``fsdp``, over which parameters and optimizer
        state are sharded; 1 (the default) keeps them replicated. Must divide the
        number of devices.

    Returns:
      A ``Mesh`` with axes ``("data",)`` or ``("data", "fsdp")``, both ``Auto``.

    Example:
      >>> mesh = data_mesh()            # every device, train state replicated
      >>> mesh = data_mesh(8, fsdp=2)   # 4 x 2: batch over all 8, params cut in 2
    """
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices must be between 1 and the {len(available)} visible {jax.default_backend()} device(s), "
                f"got {devices}"
            )
        chosen = available[:devices]
    else:
        chosen = list(cast(Sequence[jax.Device], devices))  # a bool lands here too (and list() refuses it)
    if jax.process_count() > 1 and len(chosen) != len(available):
        raise ValueError(
            f"a multi-process run must use every device ({len(available)} over {jax.process_count()} processes), "
            f"got {len(chosen)}"
        )
    if isinstance(fsdp, bool) or not isinstance(fsdp, int) or fsdp < 1 or len(chosen) % fsdp:
        raise ValueError(f"fsdp must be a positive integer that divides the {len(chosen)} devices, got {fsdp!r}")
    if fsdp == 1:
        return jax.make_mesh((len(chosen),), (DATA,), (AxisType.Auto,), devices=chosen)
    return jax.make_mesh((len(chosen) // fsdp, fsdp), (DATA, FSDP), (AxisType.Auto, AxisType.Auto), devices=chosen)


def resolve_mesh(mesh: MeshSpec) -> Mesh:
    """The mesh to train on, resolved once at the API's edge: always a mesh, one device included.

    ``None`` means every visible device, an int the first that many, a sequence those
    devices; a ``Mesh`` is checked (its axes must be ``data`` and optionally ``fsdp``).
    """
    if isinstance(mesh, Mesh):
        if DATA not in mesh.axis_names:
            raise ValueError(f"the mesh needs a {DATA!r} axis to cut the batch along; its axes are {mesh.axis_names}")
        unknown = set(mesh.axis_names) - {DATA, FSDP}
        if unknown:
            raise ValueError(
                f"fundl's data-parallel step knows the axes {DATA!r} and {FSDP!r}; the mesh also has {sorted(unknown)}"
            )
        return mesh
    return data_mesh(mesh)


def describe_mesh(mesh: Mesh) -> dict[str, Any]:
    """The mesh as plain data (for ``environment.json`` and the history); one device has no axes."""
    devices = list(mesh.devices.flat)
    return {
        "axes": {} if mesh.size == 1 else dict(zip(mesh.axis_names, mesh.devices.shape)),
        "devices": len(devices),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
    }
