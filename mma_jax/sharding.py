"""Logical axis names -> mesh axes. The one place that knows how the model is laid out."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Default rules: batch over data and fsdp, weights' embed dim over fsdp, heads / mlp / vocab
# over tensor. Config may replace them (config.mesh.rules).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vision_embed", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("length", None),
    ("layers", None),
)


def make_mesh(shape: Sequence[int]) -> Mesh:
  """Mesh over all devices with axes (data, fsdp, tensor); one -1 entry takes the rest."""
  shape = list(shape)
  n = jax.device_count()
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape={shape}: at most one -1.")
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    shape[shape.index(-1)] = n // rest
  if int(np.prod(shape)) != n:
    raise ValueError(f"config.mesh.shape={shape} needs {int(np.prod(shape))} devices; "
                     f"this run has {n}.")
  devices = np.asarray(jax.devices()).reshape(shape)
  return Mesh(devices, MESH_AXES)


def logical_shardings(abstract_boxed, mesh: Mesh, rules):
  """NamedShardings for a pytree of nn.Partitioned (from jax.eval_shape of init)."""
  specs = nn.get_partition_spec(abstract_boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def put_batch(batch, mesh: Mesh):
  """Host-local numpy batch -> global jax arrays sharded over the batch axis."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
