"""PyTorch peers of mma_jax's attention and train step, on the same packed rows (device check).

Each function takes the rows of benchmarks/attention.py's llava_rows (dict of i32[B, L] numpy
vectors) and the group ids of mma_jax.masks.group_ids, so both sides apply the same mask:

  flex_attention   torch's FlexAttention with a mask_mod over the same id vectors (query may
                   see key: same segment, not padding, and key <= query or a group match);
                   compiled on a GPU, eager on the CPU; its BlockMask is built outside the
                   timed call (its build time is returned beside).
  sdpa_dense       torch SDPA with the dense bool mask, L x L per row: the AKI / transformers way.
  llama_train_step transformers' LlamaForCausalLM (sdpa, bf16 on a GPU, gradient checkpointing,
                   AdamW) at given LLM dims, fed AKI's 4D additive mask built from the rows.

Imports torch and transformers only when called; nothing here needs grain, TFDS, clu,
TensorFlow or ml_collections.
"""
from __future__ import annotations

import time
import warnings

import numpy as np


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def device() -> str:
  return "cuda" if _torch().cuda.is_available() else "cpu"


def mask_mod(segment_ids, qgroup, kgroup):
  """FlexAttention mask_mod over the compact ids (one group channel).

  Args: segment_ids i64[B, L]; qgroup, kgroup i64[B, L] (-1: no group) as torch tensors.
  """

  def allowed(b, h, q, kv):
    del h
    seg_q, seg_k = segment_ids[b, q], segment_ids[b, kv]
    group = (qgroup[b, q] == kgroup[b, kv]) & (qgroup[b, q] >= 0)
    return (seg_q == seg_k) & (seg_q != 0) & ((kv <= q) | group)

  return allowed


def allowed_per_row(fn, batch: int, length: int, dev: str):
  """i64[B, L]: each query row's allowed-key count under mask_mod `fn`, evaluated densely."""
  torch = _torch()
  q = torch.arange(length, device=dev)[:, None]
  kv = torch.arange(length, device=dev)[None, :]
  return torch.stack([fn(torch.tensor(b, device=dev), 0, q, kv).sum(-1) for b in range(batch)])


def _timed(fn, reps: int) -> float:
  """Best seconds of fn() over reps after one warm-up: CUDA events on a GPU, else wall clock."""
  torch = _torch()
  fn()
  best = float("inf")
  for _ in range(reps):
    if torch.cuda.is_available():
      start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
      torch.cuda.synchronize()
      start.record()
      fn()
      end.record()
      torch.cuda.synchronize()
      best = min(best, start.elapsed_time(end) / 1e3)
    else:
      t0 = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - t0)
  return best


def to_torch(inputs, dev: str):
  """(q, k, v, dout) jax / numpy [B, L, H, D] -> torch [B, H, L, D] bf16 (f32 on the CPU)."""
  torch = _torch()
  dtype = torch.bfloat16 if dev == "cuda" else torch.float32
  return [torch.from_numpy(np.asarray(x, np.float32)).to(dev, dtype).transpose(1, 2)
          .contiguous() for x in inputs]


def _fwd_bwd_times(attend, q, k, v, dout, reps: int, backward: bool = True):
  """(fwd s, fwd+bwd s or None when not backward) of attend(q, k, v) -> [B, H, L, D]."""
  torch = _torch()
  qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (q, k, v))

  def fwd():
    with torch.no_grad():
      attend(q, k, v)

  def fwd_bwd():
    out = attend(qg, kg, vg)
    torch.autograd.grad(out, (qg, kg, vg), dout)

  return _timed(fwd, reps), _timed(fwd_bwd, reps) if backward else None


def flex_times(ids, inputs, reps: int):
  """FlexAttention (fwd s, fwd+bwd s, BlockMask build s, allowed per row i64[B, L] numpy).

  Args: ids: (segment_ids, qgroup, kgroup) numpy [B, L] (one group channel); inputs: q, k, v,
    dout as [B, L, H, D] (GQA: H a multiple of K, enable_gqa).
  On the CPU, FlexAttention runs eager and has no backward (torch 2.13): fwd+bwd is None.
  """
  torch = _torch()
  from torch.nn.attention import flex_attention as fa  # pylint: disable=g-import-not-at-top
  dev = device()
  seg, qg, kg = (torch.from_numpy(np.asarray(x, np.int64)).to(dev) for x in ids)
  fn = mask_mod(seg, qg, kg)
  batch, length = seg.shape
  t0 = time.perf_counter()
  block_mask = fa.create_block_mask(fn, batch, None, length, length, device=dev)
  build_s = time.perf_counter() - t0
  q, k, v, dout = to_torch(inputs, dev)
  attend = fa.flex_attention
  if dev == "cuda":
    attend = torch.compile(fa.flex_attention, dynamic=False)
  with warnings.catch_warnings():  # eager on the CPU: it says so once per process; we know
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    times = _fwd_bwd_times(
        lambda q, k, v: attend(q, k, v, block_mask=block_mask, enable_gqa=True), q, k, v, dout,
        reps, backward=dev == "cuda")
  counts = allowed_per_row(fn, batch, length, dev).cpu().numpy()
  return times + (build_s, counts)


def sdpa_dense_times(allowed, inputs, reps: int):
  """torch SDPA with a dense bool mask (allowed: bool[B, L, L] numpy): (fwd s, fwd+bwd s).

  Rows that may attend nothing give NaN in SDPA; no loss reads them and the time is the same.
  """
  torch = _torch()
  dev = device()
  mask = torch.from_numpy(np.array(allowed, copy=True)).to(dev)[:, None]
  q, k, v, dout = to_torch(inputs, dev)
  return _fwd_bwd_times(
      lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
          q, k, v, attn_mask=mask, enable_gqa=True), q, k, v, dout, reps)


def llama_train_step(dims: dict, allowed, tokens, positions, loss_mask, reps: int):
  """transformers' LlamaForCausalLM train step on the rows with AKI's 4D additive mask.

  Args: dims: hidden, layers, heads, kv_heads, head_dim, mlp_dim, vocab_size, rope_theta;
    allowed bool[B, L, L]; tokens, positions i32[B, L]; loss_mask bool[B, L] (numpy).
  Returns: (best step s, parameter count, first loss).
  """
  torch = _torch()
  import transformers  # pylint: disable=g-import-not-at-top
  dev = device()
  dtype = torch.bfloat16 if dev == "cuda" else torch.float32
  config = transformers.LlamaConfig(
      vocab_size=dims["vocab_size"], hidden_size=dims["hidden"],
      intermediate_size=dims["mlp_dim"], num_hidden_layers=dims["layers"],
      num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"],
      head_dim=dims["head_dim"], rope_theta=dims.get("rope_theta", 500000.0),
      tie_word_embeddings=False, attn_implementation="sdpa")
  model = transformers.LlamaForCausalLM(config).to(dev, dtype).train()
  # transformers 5.25 renamed it (the old name warns); the H200 image has 5.17.
  (getattr(model, "activation_checkpointing_enable", None)
   or model.gradient_checkpointing_enable)()
  try:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
  except (RuntimeError, TypeError):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
  allowed = torch.from_numpy(np.array(allowed, copy=True)).to(dev)[:, None]
  ids = torch.from_numpy(np.asarray(tokens, np.int64)).to(dev)
  pos = torch.from_numpy(np.asarray(positions, np.int64)).to(dev)
  labels = np.full(ids.shape, -100, np.int64)  # HF shifts: labels[t + 1] is t's target
  labels[:, 1:] = np.where(np.asarray(loss_mask)[:, :-1], np.asarray(tokens)[:, 1:], -100)
  labels = torch.from_numpy(labels).to(dev)
  losses = []

  def step():
    # AKI builds its additive mask per step (0 allowed, finfo.min masked).
    mask = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(
        ~allowed, torch.finfo(dtype).min)
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels,
                use_cache=False)
    out.loss.backward()
    opt.step()
    losses.append(out.loss.item())

  best = _timed(step, reps)
  return best, sum(p.numel() for p in model.parameters()), losses[0]
