"""Parallel training: device meshes, where arrays go (and how they come back to the host), process start-up.

``fit`` trains data-parallel over every visible device by default; this package holds
the pieces it uses and the ones a user may want directly. (The per-device ``shard_map``
step is a training step: :func:`fundl.train.shard_map_step`.)

Example:
  >>> mesh = fundl.distributed.data_mesh(8, fsdp=2)   # data 4 x fsdp 2
  >>> fit(loss_fn, optimizer, train_state, data, batch_size=64, mesh=mesh)
"""

from fundl.distributed._mesh import (
    DATA as DATA,
    FSDP as FSDP,
    MeshSpec as MeshSpec,
    data_mesh as data_mesh,
    describe_mesh as describe_mesh,
    resolve_mesh as resolve_mesh,
)
from fundl.distributed._placement import (
    Placement as Placement,
    fsdp_spec as fsdp_spec,
    host_copy as host_copy,
    key_data as key_data,
    wrap_keys as wrap_keys,
)
from fundl.distributed._start import (
    initialize as initialize,
    use_cpu_devices as use_cpu_devices,
    use_persistent_cache as use_persistent_cache,
)
