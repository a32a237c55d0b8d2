"""Building blocks shared by the vision tower, the connector and the LLM."""
from __future__ import annotations

import re
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mma_jax.models.configs import REMAT_POLICIES, LoRAConfig

# Remat policy name -> jax.checkpoint policy (None = no rematerialisation).
_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
assert tuple(_POLICIES) == REMAT_POLICIES, "configs.REMAT_POLICIES and _POLICIES differ"


def dtype_of(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


class _LogicallyPartitioned(nn.LogicallyPartitioned):
  """Constrains only at full rank: nn.DenseGeneral unboxes its flat 2-D kernel before reshaping
  it (flax#3676), which under jax.set_mesh would apply the 3-D names to a 2-D array."""

  def unbox(self, apply_constraint=True):
    return super().unbox(apply_constraint and jnp.ndim(self.value) == len(self.names))


def param_init(init, names: Sequence[str]):
  """An initializer whose parameter carries logical axis names for sharding."""
  names = tuple(names)
  return lambda *args, **kwargs: _LogicallyPartitioned(init(*args, **kwargs), names)


def targeted(path: Sequence[str], targets: Sequence[str]) -> bool:
  """Whether a module path ('llm', 'layers', 'q') ends with a full match of a target regex."""
  ends = ["/".join(path[i:]) for i in range(len(path))]
  return any(re.fullmatch(t, e) for t in targets for e in ends)


class Dense(nn.DenseGeneral):
  """DenseGeneral, plus a low-rank adapter (LoRA) when `lora` targets this module's path.

  The adapter adds (alpha / rank) * (x . A) . B with A f32[*in, rank] and B f32[rank, *out]
  (params lora_a, lora_b next to kernel): B starts at zero, so the output starts unchanged.
  """
  lora: LoRAConfig | None = None
  names: tuple = ()  # the kernel's logical axis names: [*in, *out]

  @nn.compact
  def __call__(self, inputs):
    y = super().__call__(inputs)
    if self.lora is None or not self.lora.rank or not targeted(self.path, self.lora.targets):
      return y
    axes = tuple(a % inputs.ndim for a in (self.axis if isinstance(self.axis, tuple)
                                             else (self.axis,)))
    n_in, rank = len(axes), self.lora.rank
    features = tuple(self.features) if isinstance(self.features, (tuple, list)) else (
        self.features,)
    a = self.param("lora_a", param_init(nn.initializers.variance_scaling(
        1.0, "fan_in", "normal", in_axis=tuple(range(n_in)), out_axis=-1),
        self.names[:n_in] + (None,)), tuple(inputs.shape[i] for i in axes) + (rank,))
    b = self.param("lora_b", param_init(nn.initializers.zeros_init(), (None,) + self.names[n_in:]),
                   (rank,) + features)
    xa = jnp.tensordot(inputs.astype(self.dtype), a.astype(self.dtype),
                       axes=(axes, tuple(range(n_in))))
    return y + self.lora.scale * jnp.tensordot(xa, b.astype(self.dtype), axes=1)


def dense(features, names, *, axis=-1, use_bias=False, dtype=jnp.float32, name=None,
          lora: LoRAConfig | None = None):
  """Dense with logical names on the kernel (and on the bias: its trailing names); `lora`
  adds an adapter when it targets the module."""
  n_out = len(features) if isinstance(features, (tuple, list)) else 1
  return Dense(
      features, axis=axis, use_bias=use_bias, dtype=dtype, name=name, lora=lora,
      names=tuple(names),
      kernel_init=param_init(nn.initializers.lecun_normal(), names),
      bias_init=param_init(nn.initializers.zeros_init(), names[-n_out:]))


def scanned(layer_cls, num_layers: int, remat: str, in_axes, unroll: int = 1):
  """layer_cls stacked num_layers times under nn.scan, params with a leading 'layers' axis.

  The layer is called as layer(carry, *args) -> (carry, per_layer_output); in_axes says for each
  of args whether it is scanned over (0) or shared by all layers (nn.broadcast). unroll: layers
  per loop iteration, 0 = all (straight-line code: no loop, no per-layer slicing of the saved
  activations; on the CPU the tiny model's step is 1.2x faster, and results are the same).
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat policy {remat!r}; expected one of {sorted(REMAT_POLICIES)}.")
  if remat != "none":
    layer_cls = nn.remat(layer_cls, policy=_POLICIES[remat], prevent_cse=False)
  return nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                 in_axes=in_axes, length=num_layers, unroll=unroll or num_layers,
                 metadata_params={nn.PARTITION_NAME: "layers"})


class RMSNorm(nn.Module):
  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: f[..., D] -> f[..., D]; normalised in float32 as HF does."""
    scale = self.param("scale", param_init(nn.initializers.ones_init(), ("embed",)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32.astype(self.dtype) * scale.astype(self.dtype))


def layer_norm(eps, dtype, name=None):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=param_init(nn.initializers.ones_init(), ("embed",)),
                      bias_init=param_init(nn.initializers.zeros_init(), ("embed",)))


def constrain(x, names):
  """Activation sharding hint by logical names (a no-op outside a mesh/rules context)."""
  return nn.with_logical_constraint(x, names)
