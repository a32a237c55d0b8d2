"""Name-and-layout rules between HF tensors and mma_jax parameters, one table per family.

A Rule ties HF tensors (names with '{i}' for the layer index when `layers` > 0) to mma_jax
parameter paths ('llm/layers/q/kernel'), with a pair of functions between the two layouts:
  to_flax(*hf arrays) -> tuple of param arrays (for one layer)
  to_hf(*param arrays) -> tuple of hf arrays
Layer-indexed rules are stacked on the leading 'layers' axis that nn.scan gives parameters.
Import, export and the expected-shape check all read the same table, so they cannot disagree.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: tuple[str, ...]
  params: tuple[str, ...]
  to_flax: Callable
  to_hf: Callable
  layers: int = 0

  def hf_names(self, prefix: str = "") -> list[str]:
    if not self.layers:
      return [prefix + n for n in self.hf]
    return [prefix + n.format(i=i) for i in range(self.layers) for n in self.hf]


# Layout pairs. Works on numpy arrays (import) and on jax arrays / tracers (export, shapes).
def same():
  return (lambda x: (x,)), (lambda x: (x,))


def linear(*out_shape):
  """torch Linear weight [out, in] <-> kernel [in, *out_shape]."""
  def to_flax(w):
    return (w.T.reshape((w.shape[1],) + out_shape),)

  def to_hf(k):
    return (k.reshape(k.shape[0], -1).T,)
  return to_flax, to_hf


def linear_in(*in_shape):
  """torch Linear weight [out, prod(in_shape)] <-> kernel [*in_shape, out] (attention output)."""
  def to_flax(w):
    return (w.T.reshape(in_shape + (w.shape[0],)),)

  def to_hf(k):
    return (k.reshape(-1, k.shape[-1]).T,)
  return to_flax, to_hf


def reshaped(*shape):
  """A bias [prod(shape)] <-> [*shape]."""
  def to_flax(b):
    return (b.reshape(shape),)

  def to_hf(b):
    return (b.reshape(-1),)
  return to_flax, to_hf


def fused_linear(*out_shapes):
  """One torch Linear whose outputs are several projections stacked (Phi-3 qkv_proj / gate_up,
  AKI to_kv) <-> one kernel [in, *shape] per projection."""
  sizes = [int(np.prod(s)) for s in out_shapes]

  def to_flax(w):
    parts, start = [], 0
    for size, shape in zip(sizes, out_shapes):
      parts.append(w[start:start + size].T.reshape((w.shape[1],) + shape))
      start += size
    return tuple(parts)

  def to_hf(*kernels):
    return (jnp.concatenate([k.reshape(k.shape[0], -1).T for k in kernels], axis=0),)
  return to_flax, to_hf


def conv_patch():
  """torch Conv2d weight [out, in, kh, kw] <-> flax Conv kernel [kh, kw, in, out]."""
  return (lambda w: (w.transpose(2, 3, 1, 0),)), (lambda k: (k.transpose(3, 2, 0, 1),))


def rule(hf, params, pair, layers=0) -> Rule:
  hf = (hf,) if isinstance(hf, str) else tuple(hf)
  params = (params,) if isinstance(params, str) else tuple(params)
  return Rule(hf, params, pair[0], pair[1], layers)


def prefixed(rules: Sequence[Rule], hf_prefix: str, param_prefix: str) -> list[Rule]:
  """The same rules under an HF name prefix and a parameter subtree."""
  return [dataclasses.replace(r, hf=tuple(hf_prefix + n for n in r.hf),
                              params=tuple(f"{param_prefix}/{p}" for p in r.params))
          for r in rules]


def import_params(rules: Sequence[Rule], tensors: Mapping[str, np.ndarray],
                  dtype=np.float32) -> dict[str, np.ndarray]:
  """HF tensors -> flat {param path: array}."""
  out = {}
  for r in rules:
    if r.layers:
      per_layer = [r.to_flax(*(np.asarray(tensors[n.format(i=i)]) for n in r.hf))
                   for i in range(r.layers)]
      arrays = [np.stack([layer[j] for layer in per_layer]) for j in range(len(r.params))]
    else:
      arrays = r.to_flax(*(np.asarray(tensors[n]) for n in r.hf))
    for path, a in zip(r.params, arrays, strict=True):
      out[path] = np.asarray(a, dtype)
  return out


def export_params(rules: Sequence[Rule], params: Mapping[str, np.ndarray],
                  dtype=np.float32) -> dict[str, np.ndarray]:
  """Flat {param path: array} -> HF tensors (the inverse of import_params)."""
  out = {}
  for r in rules:
    if r.layers:
      for i in range(r.layers):
        arrays = r.to_hf(*(np.asarray(params[p])[i] for p in r.params))
        names = [n.format(i=i) for n in r.hf]
        out.update({n: np.asarray(a).astype(dtype) for n, a in zip(names, arrays, strict=True)})
    else:
      arrays = r.to_hf(*(np.asarray(params[p]) for p in r.params))
      out.update({n: np.asarray(a).astype(dtype) for n, a in zip(r.hf, arrays, strict=True)})
  return out


def hf_shapes(rules: Sequence[Rule], param_shapes: Mapping[str, tuple]) -> dict[str, tuple]:
  """The HF tensor shapes the rules expect for parameters of the given shapes (no allocation)."""
  out = {}
  for r in rules:
    try:
      shapes = [param_shapes[p] for p in r.params]
    except KeyError as e:
      raise KeyError(f"Conversion rule for {r.hf} needs parameter {e} which this model "
                     "config does not have.") from None
    if r.layers:
      shapes = [s[1:] for s in shapes]
    structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    hf = jax.eval_shape(r.to_hf, *structs)
    names = r.hf if not r.layers else None
    for i in range(max(r.layers, 1)):
      for n, a in zip(names or [n.format(i=i) for n in r.hf], hf, strict=True):
        out[n] = tuple(a.shape)
  return out
