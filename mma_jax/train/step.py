"""The train step and the state it updates: loss on response tokens, gradient accumulation,
freezing, and the sharded layout of state, batch and metrics.

A batch (mma_jax.tokens.TRAIN_KEYS, sharded over data x fsdp) -> VLM logits with the run's mask
kind -> next-token NLL where loss_mask is True -> AdamW on the trainable parameters.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mma_jax import sharding, tokens
from mma_jax.models import build, vlm
from mma_jax.train import optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def token_loss(logits, targets, loss_mask):
  """Summed next-token NLL over loss_mask and the token count.

  Args: logits f32[B, L, V]; targets i32[B, L]; loss_mask bool[B, L].
  Returns: (sum f32[], count f32[]).
  """
  nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
      logits, targets[..., None], axis=-1)[..., 0]
  mask = loss_mask.astype(jnp.float32)
  return jnp.sum(nll * mask), jnp.sum(mask)


def chunked_token_loss(head, x, targets, loss_mask, chunk: int):
  """token_loss without the whole logits: `chunk` tokens of every row at a time, each chunk's
  logits recomputed in the backward pass (jax.checkpoint), so only one chunk's f32 logits
  [B, chunk, V] and their gradient are ever live.

  Args: head: f[B, C, E] -> logits f32[B, C, V]; x f[B, L, E] (final-normed hidden states);
    targets i32[B, L]; loss_mask bool[B, L]; chunk: C, tokens per chunk.
  Returns: (sum f32[], count f32[]).
  """
  b, length, e = x.shape
  n = -(-length // chunk)
  pad = ((0, 0), (0, n * chunk - length))
  # [n, B, C, ...]: the scan walks the chunks, every chunk keeps the batch's sharding
  split = lambda a: jnp.moveaxis(a.reshape((b, n, chunk) + a.shape[2:]), 1, 0)
  xs = (split(jnp.pad(x, pad + ((0, 0),))), split(jnp.pad(targets, pad)),
        split(jnp.pad(loss_mask, pad)))

  @jax.checkpoint
  def one(x_c, t_c, m_c):
    return token_loss(head(x_c), t_c, m_c)

  def body(carry, chunk_xs):
    s, c = one(*chunk_xs)
    return (carry[0] + s, carry[1] + c), None

  (total, count), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), xs)
  return total, count


def model_loss(model: vlm.VLM, params, batch, kind: str):
  """Summed NLL over the batch's loss_mask and its count: through chunked_token_loss when
  model.llm.loss_chunk asks for chunks at this length, else over the whole logits."""
  inputs = tokens.model_inputs(batch)
  chunk = model.cfg.llm.loss_chunk_for(batch["tokens"].shape[1])
  if not chunk:
    logits, _ = model.apply({"params": params}, inputs, kind)
    return token_loss(logits, batch["targets"], batch["loss_mask"])
  x, _ = model.apply({"params": params}, inputs, kind, logits=False)
  head = lambda h: model.apply({"params": params}, h, method=vlm.VLM.head)
  return chunked_token_loss(head, x, batch["targets"], batch["loss_mask"], chunk)


def trainable_loss(model: vlm.VLM, kind: str, trainable):
  """(params, batch) -> model_loss's (summed NLL, count), with the parameters that `trainable`
  (a tree of bools like params) marks False held constant."""

  def loss_sum(params, batch):
    # Frozen parameters take no gradient: no backward pass is traced for what only they need
    # (the vision tower at the input, even inside encode_used's scan).
    params = jax.tree_util.tree_map(lambda p, t: p if t else jax.lax.stop_gradient(p), params,
                                    trainable)
    return model_loss(model, params, batch, kind)

  return loss_sum


def make_train_step(model: vlm.VLM, opt: optax.GradientTransformation, kind: str,
                    grad_accum: int, trainable):
  """jit-able (state, batch) -> (state, metrics); the loss averages over all response tokens
  of the step, whether they come in one batch or in grad_accum micro-batches."""
  loss_sum = trainable_loss(model, kind, trainable)

  def step(state: TrainState, batch):
    # Micro-batch k takes rows k, k + grad_accum, ...: every device keeps its own rows.
    micro = jax.tree_util.tree_map(
        lambda x: x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:]).swapaxes(0, 1),
        batch)

    def accumulate(carry, mb):
      grads, total, count = carry
      (s, n), g = jax.value_and_grad(loss_sum, has_aux=True)(state.params, mb)
      return (jax.tree_util.tree_map(jnp.add, grads, g), total + s, count + n), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    (grads, total, count), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), micro)
    count = jnp.maximum(count, 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / count, grads)
    grad_norm = optax.global_norm([g for g, t in zip(jax.tree_util.tree_leaves(grads),
                                                     jax.tree_util.tree_leaves(trainable)) if t])
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    images = vlm.used_slots(batch["modality"], model.cfg.tokens_per_image,
                            batch["images"].shape[1])
    metrics = {"loss": total / count, "grad_norm": grad_norm, "loss_tokens": count,
               "tokens": jnp.sum(batch["segment_ids"] != 0), "images": jnp.sum(images)}
    return TrainState(state.step + 1, params, opt_state), metrics

  return step


def abstract_state(model_cfg, opt, mesh, rules, optim_cfg=None) -> TrainState:
  """The TrainState's shapes, each carrying its sharding: the layout to create the state in
  and the target a checkpoint restores into (parameters by the logical rules, optimizer
  moments like the parameters they mirror, scalars replicated). With optim_cfg, frozen
  parameters take config.optim.frozen_dtype (optimizer.stored)."""
  params = build.restore_target(model_cfg, mesh, rules)
  if optim_cfg is not None:
    params = optimizer.stored(params, optim_cfg)
  opt_state = jax.eval_shape(opt.init, params)
  opt_sh = sharding.like_params(opt_state, params,
                                jax.tree_util.tree_map(lambda p: p.sharding, params), mesh)
  opt_state = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), opt_state, opt_sh)
  return TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh)),
                    params, opt_state)


def init_state(model: vlm.VLM, opt, seed: int, shardings: TrainState, mesh, rules,
               params=None, dtypes=None) -> TrainState:
  """A TrainState at step 0 created in `shardings`: fresh parameters from `seed` (created
  sharded: nothing is materialised whole) unless `params` are given, in `dtypes` (a tree
  like the parameters; None = as they are), and a fresh optimizer."""
  if params is None:
    params, _ = build.init_params(model, seed, mesh, rules)
  if dtypes is not None:
    params = jax.tree_util.tree_map(lambda p, d: p.astype(d), params, dtypes)
  opt_state = jax.jit(opt.init, out_shardings=shardings.opt_state)(params)
  return TrainState(jax.device_put(jnp.int32(0), shardings.step), params, opt_state)


def jit_train_step(model, opt, kind: str, grad_accum: int, trainable, shardings: TrainState,
                   mesh):
  """The jitted step with its layout fixed: state as `shardings`, batch over data x fsdp,
  metrics replicated; the old state's buffers are reused (donated)."""
  return jax.jit(make_train_step(model, opt, kind, grad_accum, trainable),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
