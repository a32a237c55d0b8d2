"""Attention cost of MMA vs causal vs prefix, per implementation, on the current device.

  python benchmarks/attention.py                              # L = 2048, 4096, 8192
  python benchmarks/attention.py --lengths=256,512 --quick    # CI-sized, minutes on a CPU

Rows are packed LLaVA-like examples (a system prompt, a few hundred image tokens, a question,
the assistant header, an answer; padding at the end). For every length, implementation and
mask kind it prints forward and forward+backward time (best of --reps), the compiled
program's peak temporary memory (XLA's memory analysis of the forward+backward; one program
serves every kind, as the kinds differ only in the ids' values, so it repeats), and the share
of (query block, key block) pairs the implementation visits; then the ratios MMA / causal and
implementation / dense-mask path ('xla'). Last, the train-step time ratio MMA / causal for the
tiny model and the ~1B preset (the latter only on an accelerator).

The Pallas kernels of another backend only run in interpret mode (meaningless for speed), so
by default a CPU times xla and blockwise, a GPU adds pallas_gpu and a TPU pallas_tpu.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mma_jax import attention, masks
from mma_jax.kernels import block_mask

# Block sizes each implementation tiles with by default (for the visited-blocks column).
DEFAULT_BLOCKS = {"blockwise": 256, "pallas_gpu": 128, "pallas_tpu": 512}


def llava_rows(rng, batch: int, length: int, image_tokens: int, quick: bool):
  """Packed rows of single-turn image examples: dict of i32[B, L] vectors."""
  question, answer, system = ((4, 16), (4, 24), 4) if quick else ((16, 64), (16, 128), 12)
  out = {n: np.zeros((batch, length), np.int32)
         for n in ("segment_ids", "modality", "role", "turn", "positions")}
  for b in range(batch):
    pos, seg = 0, 0
    while True:
      parts = [(system, 0, 1), (image_tokens, 1, 1), (rng.integers(*question), 0, 1),
               (2, 0, 1), (rng.integers(*answer), 0, 2)]  # (tokens, modality, role)
      n = sum(p[0] for p in parts)
      if pos + n > length:
        break
      seg += 1
      for size, modality, role in parts:
        sl = slice(pos, pos + size)
        out["segment_ids"][b, sl], out["modality"][b, sl], out["role"][b, sl] = seg, modality, role
        pos += size
      out["positions"][b, pos - n:pos] = np.arange(n)
  return out


def best_times(fns, args, reps: int) -> list[float]:
  """Best seconds of each fn(*args) over reps, measured round-robin so that drift in a shared
  machine's load hits every fn alike (the best is the least disturbed run)."""
  for fn in fns:
    jax.block_until_ready(fn(*args))  # compile + warm up
  times = [[] for _ in fns]
  for _ in range(reps):
    for fn, t in zip(fns, times):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      t.append(time.perf_counter() - t0)
  return [min(t) for t in times]


def temp_mib(fn, args) -> float:
  analysis = fn.lower(*args).compile().memory_analysis()
  return float("nan") if analysis is None else analysis.temp_size_in_bytes / 2 ** 20


def visited(q_ids, k_ids, block: int | None) -> float:
  """Share of block pairs visited at this tile size (1 for the dense path)."""
  if block is None:
    return 1.0
  length = q_ids.segment.shape[1]
  block = min(block, length)
  padded = block_mask.round_up(length, block)
  q_ids, k_ids = block_mask.pad(q_ids, padded), block_mask.pad(k_ids, padded)
  return float(jnp.mean(block_mask.live_blocks(q_ids, k_ids, block, block)))


def bench_attention(args, implementations):
  rng = np.random.default_rng(0)
  dtype = jnp.dtype(args.dtype)
  results = {}
  print(f"{'L':>6} {'implementation':>14} {'kind':>7} {'fwd ms':>9} {'fwd+bwd ms':>11} "
        f"{'temp MiB':>9} {'blocks':>7}")
  for length in args.lengths:
    rows = llava_rows(rng, args.batch, length, args.image_tokens, args.quick)
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (args.batch, length, args.heads, args.head_dim), dtype)
    k = jax.random.normal(keys[1], (args.batch, length, args.kv_heads, args.head_dim), dtype)
    v = jax.random.normal(keys[2], k.shape, dtype)
    dout = jax.random.normal(keys[3], q.shape, dtype)
    # XLA's dense fwd+bwd holds about four f32 [B, H, L, L] arrays (measured on the CPU:
    # 8.1 GiB at L=4096 and 32 GiB at 8192 with 32 heads).
    dense_gib = 4 * 4 * args.batch * args.heads * length ** 2 / 2 ** 30
    for impl in implementations:
      if impl == "xla" and dense_gib > args.dense_limit_gib:
        print(f"{length:>6} {impl:>14}   skipped: ~{dense_gib:.0f} GiB of dense logits "
              f"(--dense_limit_gib={args.dense_limit_gib})")
        continue
      fwd = jax.jit(lambda q, k, v, ids: attention.attention(q, k, v, *ids, impl))

      @jax.jit
      def fwd_bwd(q, k, v, ids, dout):
        _, vjp = jax.vjp(lambda q, k, v: attention.attention(q, k, v, *ids, impl), q, k, v)
        return vjp(dout)

      ids = {kind: attention.token_ids(rows["segment_ids"], rows["modality"], rows["role"],
                                       rows["turn"], kind) for kind in masks.KINDS}
      # One compiled program per implementation: the kind only changes the ids' values.
      t_f = best_times([lambda q, k, v, i=i: fwd(q, k, v, i) for i in ids.values()],
                         (q, k, v), args.reps)
      t_fb = best_times([lambda q, k, v, i=i: fwd_bwd(q, k, v, i, dout)
                           for i in ids.values()], (q, k, v), args.reps)
      mem = temp_mib(fwd_bwd, (q, k, v, ids["mma"], dout))
      for n, kind in enumerate(masks.KINDS):
        share = visited(*ids[kind], DEFAULT_BLOCKS.get(impl))
        results[length, impl, kind] = (t_f[n], t_fb[n])
        print(f"{length:>6} {impl:>14} {kind:>7} {t_f[n] * 1e3:>9.2f} {t_fb[n] * 1e3:>11.2f} "
              f"{mem:>9.1f} {share:>7.1%}", flush=True)
  return results


def print_ratios(results, implementations, lengths):
  print("\nMMA / causal and prefix / causal (fwd, fwd+bwd):")
  for length in lengths:
    for impl in implementations:
      if (length, impl, "causal") not in results:
        continue
      base = results[length, impl, "causal"]
      cells = [f"{kind} {results[length, impl, kind][0] / base[0]:.2f}x, "
               f"{results[length, impl, kind][1] / base[1]:.2f}x" for kind in ("mma", "prefix")]
      print(f"  L={length:<6} {impl:>14}: " + "   ".join(cells))
  print("\nimplementation / dense-mask path 'xla' (fwd, fwd+bwd):")
  for length in lengths:
    for impl in implementations:
      if impl == "xla" or (length, "xla", "mma") not in results or (
          length, impl, "mma") not in results:
        continue
      cells = [f"{kind} {results[length, impl, kind][0] / results[length, 'xla', kind][0]:.2f}x, "
               f"{results[length, impl, kind][1] / results[length, 'xla', kind][1]:.2f}x"
               for kind in masks.KINDS]
      print(f"  L={length:<6} {impl:>14}: " + "   ".join(cells))


def train_batch(rng, batch: int, length: int, tokens_per_image: int, image_size: int,
                vocab: int, quick: bool):
  rows = llava_rows(rng, batch, length, tokens_per_image, quick)
  images = int(np.max([len(set(r.tolist()) - {0}) for r in rows["segment_ids"]]))
  tokens = rng.integers(5, vocab, size=(batch, length)).astype(np.int32)
  return dict(rows, tokens=tokens, targets=np.roll(tokens, -1, axis=1),
              loss_mask=rows["role"] == 2,
              images=rng.uniform(-1, 1, (batch, max(images, 1), image_size, image_size, 3))
              .astype(np.float32))


def bench_train_step(args):
  from mma_jax import config as config_lib
  from mma_jax import tokens
  from mma_jax.models import configs, presets, vlm
  from mma_jax.train import optimizer
  from mma_jax.train import step as step_lib

  print("\nTrain step MMA / causal (same batch, same model):")
  on_accelerator = jax.default_backend() != "cpu"
  for name in ("tiny", "llama3.2-1b"):
    if name != "tiny" and not on_accelerator:
      print(f"  {name}: skipped on the CPU (too big); run on a GPU or TPU.")
      continue
    model_dict = presets.model(name).to_dict()
    model_dict["llm"]["vocab_size"] = model_dict["llm"].get("vocab_size") or 512
    model_dict["llm"]["attention"] = args.train_attention
    cfg = configs.vlm_config_from_dict(model_dict)
    model = vlm.VLM(cfg)
    length = args.train_length if name == "tiny" else max(args.lengths)
    batch = train_batch(np.random.default_rng(0), args.train_batch, length,
                        cfg.tokens_per_image, cfg.vision.image_size, cfg.llm.vocab_size,
                        args.quick)
    model_batch = {k: batch[k] for k in tokens.MODEL_KEYS}
    params = jax.jit(lambda: model.init(jax.random.key(0), model_batch, "causal")["params"])()
    optim = config_lib.base_config().optim
    opt, _ = optimizer.make(optim, 100, params)
    trainable = optimizer.trainable_mask(params, optim.freeze)
    state = step_lib.TrainState(jnp.int32(0), params, opt.init(params))
    steps = [jax.jit(step_lib.make_train_step(model, opt, kind, 1, trainable))
             for kind in ("causal", "mma")]
    times = dict(zip(("causal", "mma"), best_times(steps, (state, batch), args.reps)))
    print(f"  {name} (L={length}, batch {args.train_batch}, attention "
          f"{attention.resolve(args.train_attention, length)}): causal "
          f"{times['causal'] * 1e3:.1f} ms, mma {times['mma'] * 1e3:.1f} ms, "
          f"MMA / causal {times['mma'] / times['causal']:.3f}x")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="2048,4096,8192")
  parser.add_argument("--implementations", default="",
                      help="comma-separated; default: the ones that run natively here")
  parser.add_argument("--quick", action="store_true",
                      help="CI-sized: few small heads, short examples, 2 repetitions")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=None)
  parser.add_argument("--kv_heads", type=int, default=None)
  parser.add_argument("--head_dim", type=int, default=None)
  parser.add_argument("--image_tokens", type=int, default=None)
  parser.add_argument("--dtype", default=None, help="default bfloat16 (float32 on a CPU)")
  parser.add_argument("--reps", type=int, default=None)
  parser.add_argument("--dense_limit_gib", type=float, default=24.0)
  parser.add_argument("--train_length", type=int, default=None)
  parser.add_argument("--train_batch", type=int, default=None)
  parser.add_argument("--train_attention", default="auto")
  parser.add_argument("--skip_train", action="store_true")
  args = parser.parse_args()
  args.lengths = [int(x) for x in args.lengths.split(",")]
  quick = args.quick
  # Llama-3.2-1B attention shape by default (32 heads, 8 kv heads, head_dim 64).
  for name, full, small in (("heads", 32, 4), ("kv_heads", 8, 2), ("head_dim", 64, 32),
                            ("image_tokens", 256, 48), ("reps", 5, 3), ("train_length", 1024, 256),
                            ("train_batch", 4, 2)):
    if getattr(args, name) is None:
      setattr(args, name, small if quick else full)
  backend = jax.default_backend()
  if args.dtype is None:
    args.dtype = "float32" if backend == "cpu" else "bfloat16"
  native = {"gpu": ["pallas_gpu"], "tpu": ["pallas_tpu"]}.get(backend, [])
  implementations = (args.implementations.split(",") if args.implementations
                     else ["xla", "blockwise"] + native)
  for impl in implementations:
    attention.resolve(impl, 0)  # unknown names fail here, before any timing
  print(f"device: {jax.devices()[0].device_kind} ({backend}); batch {args.batch}, heads "
        f"{args.heads}/{args.kv_heads}, head_dim {args.head_dim}, {args.dtype}; "
        f"{args.image_tokens} image tokens per example")
  if not native:
    print("note: no GPU or TPU here; the Pallas kernels are checked in interpret mode by the "
          "tests (tests/test_attention.py), not timed.")
  results = bench_attention(args, implementations)
  print_ratios(results, implementations, args.lengths)
  if not args.skip_train:
    bench_train_step(args)


if __name__ == "__main__":
  main()
