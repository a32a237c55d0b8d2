"""Batched decoding: prefill the prompt with the training mask, then extend one token at a time.

Prompts are right-padded to P slots (segment 0 = padding, never attended). Generated token t of
every row goes to slot P + t, so the cache index is shared by the batch while RoPE positions
continue each row's own prompt: prompt_len[b] + t. New tokens are responses (role 2), which no
mask kind opens to anyone, so they are causal — as at training time.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mma_jax import masks
from mma_jax.models import llm as llm_lib
from mma_jax.tokens import RESPONSE, TEXT


def prefill(model: nn.Module, params, prompt: Mapping[str, Any], kind: str, max_new_tokens: int):
  """Run the prompt through the model into a fresh cache of P + max_new_tokens slots.

  Args:
    prompt: right-padded tokens, segment_ids (1 real / 0 pad), modality, role, turn, positions
      i32[B, P]; images f[B, N, H, W, 3] when the prompts hold image placeholders.
  Returns: (logits at each row's last prompt token f32[B, V], cache).
  """
  b, p = prompt["tokens"].shape
  cache = llm_lib.Cache.empty(model.cfg.llm, b, p + max_new_tokens, masks.num_groups(kind))
  logits, cache = model.apply(params, prompt, kind, cache, 0)
  last = jnp.sum(prompt["segment_ids"] != 0, axis=1) - 1
  return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], cache


def extend(model: nn.Module, params, tokens, positions, turn, cache, index, kind: str):
  """One new response token per row at cache slot `index`.

  Args: tokens, positions, turn i32[B]; cache; index: scalar slot.
  Returns: (logits f32[B, V], cache).
  """
  ones = jnp.ones_like(tokens)[:, None]
  chunk = {"tokens": tokens[:, None], "segment_ids": ones, "modality": TEXT * ones,
           "role": RESPONSE * ones, "turn": turn[:, None], "positions": positions[:, None]}
  logits, cache = model.apply(params, chunk, kind, cache, index)
  return logits[:, 0], cache


def sample(logits, rng, temperature: float, top_p: float):
  """Greedy when temperature == 0, else temperature + nucleus (top-p) sampling.

  Args: logits f32[B, V]. Returns: i32[B].
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1: the top token stays
    threshold = jnp.take_along_axis(sorted_logits, keep - 1, axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "kind", "max_new_tokens", "eos_id",
                                             "pad_id", "temperature", "top_p"))
def generate(model: nn.Module, params, prompt: Mapping[str, Any], *, kind: str,
             max_new_tokens: int, eos_id: int | tuple[int, ...], pad_id: int = 0,
             temperature: float = 0.0, top_p: float = 1.0, rng=None):
  """Decode up to max_new_tokens per row; a row stops after it emits eos_id (or any of a tuple
  of ids: Tokenizer.stop_ids).

  Returns: (tokens i32[B, max_new_tokens] padded with pad_id after EOS, lengths i32[B]
  counting the EOS).
  """
  rng = jax.random.key(0) if rng is None else rng
  stops = jnp.asarray((eos_id,) if isinstance(eos_id, int) else eos_id, jnp.int32)
  b, p = prompt["tokens"].shape
  logits, cache = prefill(model, params, prompt, kind, max_new_tokens)
  prompt_len = jnp.sum(prompt["segment_ids"] != 0, axis=1)
  turn = jnp.take_along_axis(prompt["turn"], (prompt_len - 1)[:, None], axis=1)[:, 0]
  out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)

  def cond(state):
    t, _, _, _, _, done, _ = state
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(state):
    t, logits, cache, out, lengths, done, rng = state
    rng, step_rng = jax.random.split(rng)
    token = jnp.where(done, pad_id, sample(logits, step_rng, temperature, top_p))
    out = out.at[:, t].set(token)
    lengths = jnp.where(done, lengths, t + 1)
    done = done | jnp.isin(token, stops)
    logits, cache = extend(model, params, token, prompt_len + t, turn, cache, p + t, kind)
    return t + 1, logits, cache, out, lengths, done, rng

  zeros = jnp.zeros((b,), jnp.int32)
  state = (jnp.int32(0), logits, cache, out, zeros, zeros.astype(bool), rng)
  _, _, _, out, lengths, _, _ = jax.lax.while_loop(cond, body, state)
  return out, lengths
