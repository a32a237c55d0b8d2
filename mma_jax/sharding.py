"""Logical axis names -> mesh axes. The one place that knows how the model is laid out.

The mesh has three axes: `data` (replicas), `fsdp` (replicas whose parameters and optimizer
state are sharded) and `tensor` (heads / mlp / vocab split inside a layer). Parameters carry
logical names (nn.with_logical_partitioning); rules map them to mesh axes. A parameter
dimension that a mesh axis does not divide stays unsharded on that axis.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Default rules: batch over data and fsdp, weights' embed dim over fsdp, heads / mlp / vocab
# over tensor. config.mesh.rules overrides entries by logical name.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
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


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """(data, fsdp, tensor) with the one -1 entry (if any) resolved to take the other devices."""
  shape = [int(s) for s in shape]
  if len(shape) != len(MESH_AXES) or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh.shape={tuple(shape)}: give {len(MESH_AXES)} sizes for "
                     f"{MESH_AXES}, each positive or one -1 (the remaining devices).")
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape={tuple(shape)}: at most one -1.")
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if num_devices % rest:
      raise ValueError(f"config.mesh.shape={tuple(shape)}: {num_devices} devices are not a "
                       f"multiple of {rest}.")
    shape[shape.index(-1)] = num_devices // rest
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh.shape={tuple(shape)} needs {math.prod(shape)} devices; this "
                     f"run has {num_devices}. Use -1 for one axis to take the rest.")
  return tuple(shape)


def make_mesh(shape: Sequence[int], devices: Sequence[Any] | None = None) -> Mesh:
  """Mesh over `devices` (default: all devices of all processes), axes MESH_AXES.

  jax.make_mesh orders the devices for the physical topology (TPU rings / ICI) and keeps each
  process's devices together; the axes are Auto (the compiler propagates shardings).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def abstract_mesh(shape: Sequence[int], num_devices: int) -> AbstractMesh:
  """A device-free mesh of the same shape, for estimates of a cluster this machine lacks."""
  return AbstractMesh(mesh_shape(shape, num_devices), MESH_AXES,
                      axis_types=(AxisType.Auto,) * len(MESH_AXES))


def make_rules(overrides: Sequence[Sequence[Any]] = ()) -> tuple:
  """DEFAULT_RULES with entries replaced (or added) by (logical name, mesh axes) pairs.

  Mesh axes are None (replicated), one axis name or a sequence of them, e.g.
  config.mesh.rules = (("embed", None), ("mlp", ("fsdp", "tensor"))).
  """
  rules = dict(DEFAULT_RULES)
  for i, rule in enumerate(overrides):
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"config.mesh.rules[{i}]={rule!r}: use a (logical name, mesh axes) pair.")
    name, axes = rule
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"config.mesh.rules[{i}]={tuple(rule)!r}: unknown mesh axis {axis!r}; "
                         f"use None or names from {MESH_AXES}.")
    rules[name] = axes
  return tuple(rules.items())


@contextlib.contextmanager
def use(mesh: Mesh, rules):
  """The mesh and logical rules that activation constraints (layers.constrain) resolve to."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def _axis_size(mesh, axes) -> int:
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(mesh.shape[a] for a in axes if a is not None)


def _divisible(spec: PartitionSpec, shape, mesh, where: str) -> PartitionSpec:
  """Drop mesh axes from dimensions they do not divide (that dimension is then replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is not None and dim % _axis_size(mesh, axes):
      logging.info("%s: dimension %d is not divisible by mesh axes %s; not sharded on them.",
                   where, dim, axes)
      axes = None
    out.append(axes)
  return PartitionSpec(*out)


def _is_boxed(x) -> bool:
  return isinstance(x, nn.Partitioned)


def unbox(tree):
  """Values of nn.Partitioned boxes (no sharding constraint applied)."""
  return jax.tree_util.tree_map(lambda x: x.value if _is_boxed(x) else x, tree,
                                is_leaf=_is_boxed)


def logical_shardings(abstract_boxed, mesh: Mesh | AbstractMesh, rules):
  """NamedShardings for a pytree of nn.Partitioned (from jax.eval_shape of init)."""
  specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_boxed), rules)
  values = unbox(abstract_boxed)
  flat, treedef = jax.tree_util.tree_flatten_with_path(values)
  spec_leaves = treedef.flatten_up_to(specs)
  return treedef.unflatten([
      NamedSharding(mesh, _divisible(spec, x.shape, mesh, jax.tree_util.keystr(path)))
      for (path, x), spec in zip(flat, spec_leaves)])


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def like_params(abstract_tree, params_abstract, param_shardings, mesh):
  """Shardings for a tree whose leaves mirror parameters (optimizer moments, gradients).

  A leaf whose key path ends with a parameter's path and has its shape gets that parameter's
  sharding; anything else (step counts, scalars) is replicated.
  """
  by_path = {}
  for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(params_abstract)[0],
                          jax.tree_util.tree_leaves(param_shardings)):
    by_path[tuple(str(k) for k in path)] = (x.shape, s)

  def pick(path, leaf):
    keys = tuple(str(k) for k in path)
    for i in range(len(keys)):
      shape, s = by_path.get(keys[i:], (None, None))
      if s is not None and shape == leaf.shape:
        return s
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def sharded_init(init_fn, mesh: Mesh, rules):
  """Run init_fn (-> tree of nn.Partitioned) directly into its sharded layout.

  jax.eval_shape gives the shapes and logical names, the rules give shardings, and
  jax.jit(out_shardings=...) creates every shard on its device: nothing is materialised whole.
  Returns: (params, shardings).
  """
  abstract = jax.eval_shape(init_fn)
  shardings = logical_shardings(abstract, mesh, rules)
  params = jax.jit(lambda: unbox(init_fn()), out_shardings=shardings)()
  return params, shardings


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh) -> int:
  """How many ways the global batch is split (data x fsdp)."""
  return _axis_size(mesh, BATCH_AXES)


def check_batch(global_batch: int, grad_accum: int, mesh) -> None:
  """The global batch must split evenly over processes and over data x fsdp."""
  processes, shards = jax.process_count(), batch_shards(mesh)
  if global_batch % processes:
    raise ValueError(f"config.train.batch_size={global_batch} is the global batch; it must be a "
                     f"multiple of the {processes} processes (each reads batch_size / processes "
                     "rows).")
  if shards % processes:
    raise ValueError(f"config.mesh.shape={tuple(mesh.shape.values())}: data x fsdp = {shards} "
                     f"must be a multiple of the {processes} processes, so that each process "
                     "feeds its own rows of the batch.")
  if (global_batch // grad_accum) % shards:
    raise ValueError(f"config.train.batch_size={global_batch} / config.train.grad_accum="
                     f"{grad_accum} must be a multiple of data x fsdp = {shards} "
                     f"(config.mesh.shape={tuple(mesh.shape.values())}).")


def put_batch(batch, mesh: Mesh):
  """Host-local numpy batch (this process's rows) -> global jax arrays sharded over the batch."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
