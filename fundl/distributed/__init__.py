"""Parallel training: device meshes, where arrays go, multi-host start-up.

``fit`` trains data-parallel over every visible device by default; this package holds
the pieces it uses and the ones a user may want directly. (The per-device ``shard_map``
step is a training step: :func:`fundl.train.shard_map_step`.)

Example:
  >>> mesh = fundl.distributed.data_mesh(8, fsdp=2)   # data 4 x fsdp 2
  >>> fit(loss_fn, optimizer, train_state, data, batch_size=64, mesh=mesh)
"""

from fundl.distributed._mesh import DATA as DATA
from fundl.distributed._mesh import FSDP as FSDP
from fundl.distributed._mesh import data_mesh as data_mesh
from fundl.distributed._mesh import describe_mesh as describe_mesh
from fundl.distributed._placement import Placement as Placement
from fundl.distributed._placement import fsdp_spec as fsdp_spec
from fundl.distributed._start import initialize as initialize
from fundl.distributed._start import use_cpu_devices as use_cpu_devices
