"""Bytes per device of a training run, from shapes and shardings alone (nothing is allocated).

  params       f32 master weights, sharded by the logical rules (exact)
  optimizer    AdamW moments etc., sharded like the parameters (exact)
  gradients    f32 gradients of the trainable parameters (x2 with gradient accumulation: the
               running sum and the micro-batch's), sharded like the parameters
  activations  an estimate: what a micro-batch keeps for the backward pass under the remat
               policy (layer inputs for 'full', also the projections' outputs for the 'dots'
               policies, everything for 'none'), plus one layer recomputed with its gradients
               and the float32 logits with their softmax and gradient (of one chunk of
               model.llm.loss_chunk tokens when the loss is chunked); attention scores count
               on the dense 'xla' path only (kernels keep softmax statistics); a frozen vision
               tower keeps nothing and works on one pass of model.vision.images_per_row

The model's own FLOPs are in mma_jax.models.flops; the compiled step's real footprint on the
running backend is what the training loop logs next to this estimate (XLA's memory analysis).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from mma_jax import attention as attn_lib
from mma_jax import sharding, tokens
from mma_jax.models import build, layers, vlm
from mma_jax.models.configs import VLMConfig
from mma_jax.train import optimizer
from mma_jax.train import step as step_lib

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Usage:
  """Bytes on the most loaded device."""
  params: int
  optimizer: int
  gradients: int
  activations: int

  @property
  def total(self) -> int:
    return self.params + self.optimizer + self.gradients + self.activations

  def row(self) -> dict[str, float]:
    """GiB per item and in total."""
    return {k: v / GiB for k, v in (*dataclasses.asdict(self).items(), ("total", self.total))}


def per_device(tree, shardings) -> int:
  """Bytes of the largest shard of every leaf, summed: leaves have .shape and .dtype."""
  total = 0
  for x, s in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)):
    total += math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
  return total


def trainable_components(params, freeze) -> dict[str, bool]:
  """Top-level component ('vision', 'connector', 'llm') -> whether any of its parameters train."""
  out = {}
  for path, t in jax.tree_util.tree_flatten_with_path(optimizer.trainable_mask(params, freeze))[0]:
    name = optimizer.param_path(path).split("/")[0]
    out[name] = out.get(name, False) or bool(t)
  return out


def _split(mesh, rules, name: str, dim: int, taken=sharding.BATCH_AXES) -> int:
  """How many ways an activation dimension with this logical name is split (1 if not even)."""
  axes = dict(rules).get(name)
  axes = axes if isinstance(axes, tuple) else (axes,)
  n = math.prod(mesh.shape[a] for a in axes if a is not None and a not in taken)
  return n if dim % n == 0 else 1


def _stack(tokens: float, length: int, width: int, heads: int, kv_heads: int, head_dim: int,
           mlp: int, layers_: int, policy: str, trains: bool, dtype: str, dense: bool, mesh,
           rules) -> float:
  """Activation bytes of a scanned stack of pre-norm attention + MLP blocks.

  tokens: rows x length on this device; length: the attention span of a row; dense: the
  attention materialises its float32 scores (the 'xla' path), else a kernel keeps only the
  softmax statistics per head.
  """
  s = np.dtype(layers.dtype_of(dtype)).itemsize
  q = heads * head_dim / _split(mesh, rules, "heads", heads)
  kv = kv_heads * head_dim / _split(mesh, rules, "kv_heads", kv_heads)
  m = mlp / _split(mesh, rules, "mlp", mlp)
  scores = heads / _split(mesh, rules, "heads", heads) * (length if dense else 1) * 4  # per token
  dots = s * (q + 2 * kv + 2 * width + 2 * m)  # q k v o gate up down outputs
  everything = (dots + s * (q + 3 * width + m) + 2 * scores  # + norms, probs (or statistics)
                + (length if dense else 0))  # and the boolean mask
  saved = {"full": s * width, "dots_no_batch": s * width + dots,
           "dots": s * width + dots + scores + s * q, "none": s * width + everything}[policy]
  if not trains:  # forward only: one layer's working set at a time
    return tokens * everything
  return tokens * (layers_ * saved + 2 * everything)


def activations(cfg: VLMConfig, mesh, rules, micro_batch: int, length: int, images: int,
                trainable: dict[str, bool], backend: str | None = None) -> int:
  """Estimated activation bytes of one micro-batch on one device (see the module doc).

  backend ('cpu', 'gpu', 'tpu'; default this process's) resolves model.llm.attention='auto'.
  """
  rows = math.ceil(micro_batch / sharding.batch_shards(mesh))
  v, c, m = cfg.vision, cfg.connector, cfg.llm
  grads_to_vision = trainable.get("vision", False)
  grads_to_llm = grads_to_vision or trainable.get("connector", False) or trainable.get("llm", False)
  n_img = rows * images
  # A frozen tower's working set is one pass; a trained one keeps every pass for its backward.
  vis_img = n_img if grads_to_vision or not v.images_per_row else min(
      n_img, math.ceil(v.images_per_row * rows))
  vis = _stack(vis_img * v.num_patches, v.num_patches, v.hidden, v.heads, v.heads,
               v.hidden // v.heads, v.mlp_dim, v.layers, v.remat, grads_to_vision, v.dtype,
               True, mesh, rules)
  s = np.dtype(layers.dtype_of(m.dtype)).itemsize
  if c.kind == "perceiver":
    inner, n, p = c.heads * c.dim_head, c.num_latents, v.num_patches
    block = s * (p * v.hidden + 2 * (p + n) * inner + n * (4 * v.hidden + 2 * inner
                                                           + 2 * v.hidden * c.ff_mult))
    block += 2 * 4 * n * c.heads * (p + n)
    conn = n_img * (c.depth * block + s * n * m.hidden)
  else:
    conn = n_img * s * v.num_patches * (v.hidden + 2 * m.hidden)
  dense = attn_lib.resolve(m.attention, length, backend) == "xla"
  lm = _stack(rows * length, length, m.hidden, m.heads, m.kv_heads, m.head_dim, m.mlp_dim,
              m.layers, m.remat, grads_to_llm, m.dtype, dense, mesh, rules)
  # float32 logits, their softmax (for the gradient) and the gradient itself, of one chunk
  chunk = m.loss_chunk_for(length) or length
  logits = rows * chunk * m.vocab_size / _split(mesh, rules, "vocab", m.vocab_size) * 4 * 3
  return int(vis + conn + lm + logits + 2 * rows * length * m.hidden * s)


def usage(params, param_shardings, opt_state, opt_shardings, trainable_mask, grad_accum: int,
          activation_bytes: int) -> Usage:
  """Usage from (abstract or real) parameter / optimizer trees and their shardings."""
  grads = [(p, s) for p, s, t in zip(jax.tree_util.tree_leaves(params),
                                     jax.tree_util.tree_leaves(param_shardings),
                                     jax.tree_util.tree_leaves(trainable_mask)) if t]
  grad_bytes = per_device([jax.ShapeDtypeStruct(p.shape, np.float32) for p, _ in grads],
                          [s for _, s in grads])
  return Usage(params=per_device(params, param_shardings),
               optimizer=per_device(opt_state, opt_shardings),
               gradients=grad_bytes * (2 if grad_accum > 1 else 1),
               activations=activation_bytes)


def human(n: float) -> str:
  """Bytes as B / KiB / MiB / GiB with 3 significant digits."""
  for unit in ("B", "KiB", "MiB"):
    if abs(n) < 1024:
      return f"{n:.3g} {unit}"
    n /= 1024
  return f"{n:.3g} GiB"


def format_usage(u: Usage, device_bytes: int | None = None) -> str:
  """One line: bytes per item, total, and the share of the device's memory when known."""
  items = {**dataclasses.asdict(u), "total": u.total}
  line = ", ".join(f"{k} {human(v)}" for k, v in items.items()) + " per device"
  if device_bytes:
    line += f" ({100 * u.total / device_bytes:.0f}% of {human(device_bytes)})"
  return line


def estimate(cfg: VLMConfig, mesh, rules, optim_cfg, batch: int, length: int, images: int,
             grad_accum: int = 1, backend: str | None = None) -> Usage:
  """Usage of training `cfg` on `mesh` (a Mesh or an AbstractMesh), from jax.eval_shape."""
  params, shardings = build.param_shardings(cfg, mesh, rules)
  params = optimizer.stored(params, optim_cfg)  # frozen ones maybe in bfloat16 (LoRA's base)
  opt, _ = optimizer.make(optim_cfg, 1, params)
  opt_state = jax.eval_shape(opt.init, params)
  acts = activations(cfg, mesh, rules, batch // grad_accum, length, images,
                     trainable_components(params, optim_cfg.freeze), backend)
  return usage(params, shardings, opt_state,
               sharding.like_params(opt_state, params, shardings, mesh),
               optimizer.trainable_mask(params, optim_cfg.freeze), grad_accum, acts)


def compile_step(cfg: VLMConfig, mesh, rules, optim_cfg, batch: int, length: int, images: int,
                 grad_accum: int = 1, kind: str = "mma"):
  """The train step compiled for `mesh` (real or fake devices) from ShapeDtypeStructs: nothing
  is allocated. Returns jax's Compiled (memory_analysis(), cost_analysis())."""
  data = tokens.abstract_batch(batch, length, images, cfg.vision.image_size, train=True)
  with sharding.use(mesh, rules):
    params, _ = build.param_shardings(cfg, mesh, rules)
    opt, _ = optimizer.make(optim_cfg, 1, params)
    state = step_lib.abstract_state(cfg, opt, mesh, rules)
    step = step_lib.jit_train_step(vlm.VLM(cfg), opt, kind, grad_accum,
                                   optimizer.trainable_mask(params, optim_cfg.freeze),
                                   jax.tree_util.tree_map(lambda x: x.sharding, state), mesh)
    return step.lower(state, data).compile()


def compiled(cfg: VLMConfig, mesh, rules, optim_cfg, batch: int, length: int, images: int,
             grad_accum: int = 1):
  """XLA's memory analysis of the train step compiled for `mesh` (compile_step): jax's
  CompiledMemoryStats (argument_size_in_bytes, temp_size_in_bytes, ...) of one device."""
  return compile_step(cfg, mesh, rules, optim_cfg, batch, length, images,
                      grad_accum).memory_analysis()
