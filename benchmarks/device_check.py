"""One device check of MMA attention: correctness, speed, peers and a train step, in one run.

  # Full run on a lent NVIDIA H100 / H200 (under 8 minutes; --budget_s keeps it there):
  python benchmarks/device_check.py --out=device_check.md
  # Tiny setting on a CPU (a few minutes; tests/test_device_check.py runs it):
  python benchmarks/device_check.py --tiny

It prints markdown to paste into docs/performance.md (and writes the same text to --out):

  header  device kind, jax / jaxlib / python / tokamax / torch versions, date, setting.
  (a)     every implementation of mma_jax.attention.IMPLEMENTATIONS that can run here, in bf16,
          vs the dense reference (implementation='xla', the mask built from the ids) in float32
          on the same bf16 values: max abs error of the output and of dq, dk, dv on packed rows
          with images, for every mask kind, at L = 2048 and 8192; PASS / FAIL.
  (b)     forward and forward+backward time of MMA vs causal+document masking (the 'causal'
          kind over packed rows) per implementation, and of jax.nn.dot_product_attention with
          a dense bool mask (cuDNN on a GPU), at L = 2048, 8192, 16384 (a fixed token count
          per batch: batch 8, 2, 1); ratios MMA ÷ causal and implementation ÷ dense-mask path.
          Next to every time, useful TFLOP/s: the query-key pairs the mask allows x 4·H·D
          FLOPs forward, 2.5x that backward (what a kernel that skips every masked pair does).
  (d)     peers on the same rows, shapes and mask, when torch imports: torch FlexAttention
          with a mask_mod over the same id vectors (compiled on a GPU; its allowed-key count
          per row checked equal to masks.dense_mask, a FAIL otherwise), and torch SDPA with the
          dense bool mask (the AKI / transformers way); ratios of ours (auto) to each.
  (c)     a train step of the llama3.2-1b preset (SigLIP tower, bf16) on packed 4096-token
          rows with mma_jax.train.step's jitted step: tokens/s, MFU by the project's
          convention (models/flops.py: attention over whole rows, every image slot) and useful
          MFU (attention over the allowed pairs only, filled image slots only), MMA and causal;
          then, when torch imports, transformers' LlamaForCausalLM at the preset's LLM dims
          with AKI's 4D mask (sdpa, gradient checkpointing, AdamW): the LLM alone.
  Goals   each with its measured value, met / not met (reported, never asserted).

What each section imports (a bare accelerator image has jax, flax, optax and numpy): (a), (b)
only those and mma_jax's attention, masks, tokens and kernels modules; (d) torch (transformers
for its train-step row); (c) also ml_collections and orbax-checkpoint (mma_jax.config, the
train state). None needs grain, TFDS, clu or TensorFlow.

Rows are benchmarks/attention.py's llava_rows: several examples per row, each a system
prompt, image tokens, a question, the assistant header and an answer; padding at the end.

Implementations that cannot run here are listed with attention.unavailable's reason. On a CPU
the Pallas kernels run interpreted (slow and meaningless for speed): they are checked for
correctness but only xla and blockwise are timed. Exit status 1 when a correctness check (or
a peer's mask check) fails or errs, else 0; speed or train-step errors are printed in their
row and do not stop the run.

Options: --budget_s (default 420): an item whose estimated time would end past its section's
deadline is skipped with a note (correctness keeps 30% of the budget and the train step's
first guess for what follows it; unused time passes on). --sections=correctness,speed,peers,
train and --implementations=NAME,... run a subset (a rerun of one failing part).
--dense_budget_gib (default 8) skips a dense path whose L x L arrays would need more.
--train_attention sets config.model.llm.attention of the train step (default auto).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# JAX takes 75% of a GPU's memory at start; the PyTorch peers of the same run need room too.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from benchmarks.attention import (  # pylint: disable=wrong-import-position
    best_times, llava_rows, train_batch)
from benchmarks import torch_peers  # pylint: disable=wrong-import-position
from mma_jax import attention, logs, masks, tokens  # pylint: disable=wrong-import-position

# (a): each error at most this share of the reference's max |value|. bf16 keeps 8 bits
# (2^-8 ~ 0.004 relative per rounding); the kernels round P and dS to bf16 before their
# matmuls, so a few roundings stack up. A wrong mask entry moves values by O(max |ref|).
TOLERANCE = 2e-2
SPEED_KINDS = ("causal", "mma")
GOAL_MMA_OVER_CAUSAL = 1.10
GOAL_DENSE_OVER_MMA = 2.0
GOAL_USEFUL_TFLOPS = 150.0  # MMA fwd+bwd at 8k packed (issue goal on an H100 / H200)
GOAL_OVER_FLEX = 1.5        # ours (auto) vs torch FlexAttention on MMA fwd+bwd
BACKWARD_FACTOR = 2.5       # useful backward FLOPs per forward FLOP (dq, dk, dv, recomputed P)
TINY_VOCAB = 512  # the tiny preset takes its vocabulary from a tokenizer; presets keep theirs


@dataclasses.dataclass(frozen=True)
class Setting:
  """Sizes of one run: the full device check or the --tiny CPU one."""
  check_lengths: tuple[int, ...]   # (a)
  check_heads: tuple[int, int, int]  # (a) query heads, kv heads, head dim
  speed_lengths: tuple[int, ...]   # (b)
  speed_heads: tuple[int, int, int]  # (b) Llama-3.2-1B's attention shape on the device
  speed_tokens: int                # (b) tokens per batch: batch = max(1, speed_tokens // L)
  image_tokens: int                # image tokens per example in (a) and (b)
  quick: bool                      # llava_rows' short questions / answers
  reps: int
  model: str                       # (c) preset
  train_length: int
  train_batch: int
  train_reps: int
  guess_s: float                   # first-item time estimate for the budget (compiles)
  train_guess_s: float


FULL = Setting(check_lengths=(2048, 8192), check_heads=(16, 4, 64),
               speed_lengths=(2048, 8192, 16384), speed_heads=(32, 8, 64), speed_tokens=16384,
               image_tokens=256, quick=False, reps=5, model="llama3.2-1b", train_length=4096,
               train_batch=2, train_reps=4, guess_s=20.0, train_guess_s=150.0)
TINY = Setting(check_lengths=(256,), check_heads=(4, 2, 32), speed_lengths=(256, 512),
               speed_heads=(4, 2, 32), speed_tokens=1024, image_tokens=48, quick=True, reps=3,
               model="tiny", train_length=256, train_batch=2, train_reps=3, guess_s=5.0,
               train_guess_s=30.0)
# Time kept for the speed section (share of --budget_s) when the correctness section runs
# before it; the train step keeps its first guess (Setting.train_guess_s).
SPEED_SHARE = 0.30
PEERS_SHARE = 0.15  # the same for the peers (torch compiles FlexAttention once per shape)
SECTIONS = ("correctness", "speed", "peers", "train")


class Report:
  """Prints each line as it comes (a run cut short keeps what it had) and keeps the text."""

  def __init__(self):
    self.lines: list[str] = []

  def __call__(self, line: str = "") -> None:
    print(line, flush=True)
    self.lines.append(line)

  def text(self) -> str:
    return "\n".join(self.lines) + "\n"


class Budget:
  """Wall-clock budget: an item is skipped when its estimate would end past its section's
  deadline, which keeps time for the sections after it; time a section leaves unused passes on.

  Estimates come from the same item at the previous length (scaled by the length ratio),
  else the slowest item seen at this length, else a first guess.
  """

  def __init__(self, total_s: float, guess_s: float, deadlines: dict[str, float]):
    self.total_s, self.guess_s, self.deadlines = total_s, guess_s, deadlines
    self.start = time.perf_counter()
    self.seen: dict[tuple[str, str], tuple[int, float]] = {}  # (section, name) -> (L, s)

  @classmethod
  def for_sections(cls, total_s: float, setting: Setting, sections: list[str]) -> "Budget":
    train = setting.train_guess_s if "train" in sections else 0.0
    speed = SPEED_SHARE * total_s if "speed" in sections else 0.0
    peers = PEERS_SHARE * total_s if "peers" in sections else 0.0
    return cls(total_s, setting.guess_s, {"correctness": total_s - speed - peers - train,
                                          "speed": total_s - peers - train,
                                          "peers": total_s - train, "train": total_s})

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def estimate(self, section: str, name: str, length: int, guess: float | None = None) -> float:
    if (section, name) in self.seen:
      prev_length, seconds = self.seen[section, name]
      return seconds * max(1.0, length / prev_length)
    here = [s for (sec, _), (n, s) in self.seen.items() if sec == section and n == length]
    return max(here) if here else (self.guess_s if guess is None else guess)

  def skip_reason(self, section: str, name: str, length: int, guess: float | None = None):
    """None when the item fits; else the note to print."""
    deadline = self.deadlines[section]
    est = self.estimate(section, name, length, guess)
    if self.elapsed() + est <= deadline:
      return None
    return (f"skipped: time budget (elapsed {self.elapsed():.0f} s + ~{est:.0f} s > "
            f"{deadline:.0f} s, the {section} deadline within --budget_s={self.total_s:g})")

  def record(self, section: str, name: str, length: int, seconds: float) -> None:
    self.seen[section, name] = (length, seconds)


def error_text(e: BaseException) -> str:
  """One table-safe line: ERROR: <type>: <message>."""
  msg = " ".join(str(e).split())[:300].replace("|", "/")
  return f"ERROR: {type(e).__name__}: {msg}"


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def header(out: Report, setting: Setting, argv: list[str]) -> None:
  import jaxlib  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  out("# mma_jax device check")
  out()
  out(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
  out(f"- device: {devices[0].device_kind} ({jax.default_backend()}, {len(devices)} device(s); "
      "one is used)")
  out(f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, python {platform.python_version()}"
      f", tokamax {_version('tokamax')}, torch {_version('torch')}, transformers "
      f"{_version('transformers')}")
  out(f"- command: python benchmarks/device_check.py {' '.join(argv)}".rstrip())
  out(f"- setting: {'tiny' if setting.model == TINY.model else 'full'}; attention 'auto' resolves to "
      f"{attention.resolve('auto', max(setting.speed_lengths))} here")


def implementations(out: Report, only: list[str] | None) -> list[str]:
  """The implementations that can run here (all but 'auto'); the others printed with why."""
  unavailable = getattr(attention, "unavailable", None)  # older checkouts lack it
  names, skipped = [], []
  for name in attention.IMPLEMENTATIONS:
    if name == "auto" or (only and name not in only):
      continue
    reason = unavailable(name) if unavailable else None
    if reason:
      skipped.append(f"- {name}: skipped: {reason}")
    else:
      names.append(name)
  out()
  out(f"Implementations run here: {', '.join(names) or 'none'}.")
  for line in skipped:
    out(line)
  return names


def _block(tree):
  return jax.block_until_ready(tree)


def packed_inputs(setting: Setting, batch: int, length: int, heads, seed: int):
  """Packed rows and bf16 (q, k, v, dout).

  Returns: rows (dict of i32[B, L]); q, dout bf16[B, L, H, D]; k, v bf16[B, L, K, D].
  """
  h, kv, d = heads
  rows = llava_rows(np.random.default_rng(seed), batch, length, setting.image_tokens,
                    setting.quick)
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (batch, length, h, d), jnp.bfloat16)
  k = jax.random.normal(keys[1], (batch, length, kv, d), jnp.bfloat16)
  v = jax.random.normal(keys[2], (batch, length, kv, d), jnp.bfloat16)
  dout = jax.random.normal(keys[3], (batch, length, h, d), jnp.bfloat16)
  return rows, (q, k, v, dout)


def kind_ids(rows, kind: str):
  """(q_ids, k_ids) of `kind` for the rows."""
  return attention.token_ids(jnp.asarray(rows["segment_ids"]), jnp.asarray(rows["modality"]),
                             jnp.asarray(rows["role"]), jnp.asarray(rows["turn"]), kind)


@jax.jit
def _count_allowed(q_ids, k_ids):
  return jnp.sum(masks.compact_mask(q_ids.segment, q_ids.index, q_ids.group,
                                    k_ids.segment, k_ids.index, k_ids.group), dtype=jnp.int32)


def allowed_pairs(rows, kind: str, chunk: int = 1024) -> int:
  """Query-key pairs the mask of `kind` allows over the batch, counted from the compact ids a
  chunk of query rows at a time (never the whole L x L)."""
  q_ids, k_ids = kind_ids(rows, kind)
  length = q_ids.segment.shape[1]
  chunk = min(chunk, length)
  total = 0
  for start in range(0, length, chunk):
    part = attention.TokenIds(q_ids.segment[:, start:start + chunk],
                              q_ids.index[:, start:start + chunk],
                              q_ids.group[:, :, start:start + chunk])
    total += int(_count_allowed(part, k_ids))
  return total


def useful_flops(pairs: int, heads: int, head_dim: int) -> tuple[float, float]:
  """(forward, forward+backward) FLOPs of attention over `pairs` allowed query-key pairs."""
  fwd = 4.0 * heads * head_dim * pairs  # q.k and p.v: 2 FLOPs per multiply-add each
  return fwd, fwd * (1 + BACKWARD_FACTOR)


def time_cell(seconds: float | None, flop: float) -> str:
  """'ms (useful TFLOP/s)'; n/a for a time not measured."""
  return "n/a" if seconds is None else f"{seconds * 1e3:.3f} ({flop / seconds / 1e12:.3g})"


def value_and_grads(impl: str, float32: bool = False):
  """jit (q, k, v, dout, ids) -> (out, dq, dk, dv); float32 casts the inputs first."""

  @jax.jit
  def run(q, k, v, dout, ids):
    if float32:
      q, k, v, dout = (x.astype(jnp.float32) for x in (q, k, v, dout))
    out, vjp = jax.vjp(lambda q, k, v: attention.attention(q, k, v, *ids, impl), q, k, v)
    return (out,) + vjp(dout)

  return run


@jax.jit
def _errors(got, want):
  """Max abs error and the reference's max abs value of each of the four arrays: f32[2, 4]."""
  err = [jnp.max(jnp.abs(g.astype(jnp.float32) - w)) for g, w in zip(got, want)]
  scale = [jnp.max(jnp.abs(w)) for w in want]
  return jnp.stack([jnp.stack(err), jnp.stack(scale)])


def correctness(out: Report, setting: Setting, names: list[str], budget: Budget) -> int:
  """(a). Returns the number of failed (or erring) checks."""
  h, kv, d = setting.check_heads
  out()
  out("## (a) Correctness vs the dense reference")
  out()
  out(f"bf16 q, k, v and output cotangent; {h} query heads, {kv} kv heads, head dim {d}; "
      f"{setting.image_tokens} image tokens per example. Reference: implementation='xla' (dense "
      "mask from the ids) in float32 at full matmul precision on the same bf16 values. Columns: "
      "max abs error of the output and of dq, dk, dv; PASS when every error is at most "
      f"{TOLERANCE:g} x the reference's max abs value (worst ratio shown).")
  out()
  out("| L | batch | kind | implementation | out | dq | dk | dv | worst err / max ref | result |")
  out("|---|---|---|---|---|---|---|---|---|---|")
  failures = 0
  for length in setting.check_lengths:
    batch = 2 if length <= 4096 else 1
    rows, (q, k, v, dout) = packed_inputs(setting, batch, length, setting.check_heads, seed=1)
    ids = {kind: kind_ids(rows, kind) for kind in masks.KINDS}
    want = {}
    skip = budget.skip_reason("correctness", "reference", length)
    if skip:  # no implementation could follow it in time either
      out(f"| {length} | {batch} | all | all | {skip} | | | | | not run |")
      continue
    t0 = time.perf_counter()
    try:
      reference = value_and_grads("xla", float32=True)
      with jax.default_matmul_precision("float32"):  # no TF32 in the reference on a GPU
        for kind in masks.KINDS:
          want[kind] = _block(reference(q, k, v, dout, ids[kind]))
    except Exception as e:  # pylint: disable=broad-except
      out(f"| {length} | {batch} | all | reference | {error_text(e)} | | | | | FAIL |")
      failures += len(names) * len(masks.KINDS)
      continue
    budget.record("correctness", "reference", length, time.perf_counter() - t0)
    for name in names:
      skip = budget.skip_reason("correctness", name, length)
      if skip:
        out(f"| {length} | {batch} | all | {name} | {skip} | | | | | not run |")
        continue
      t0 = time.perf_counter()
      try:
        run = value_and_grads(name)
        for kind in masks.KINDS:
          err, scale = np.asarray(_errors(run(q, k, v, dout, ids[kind]), want[kind]))
          ratio = float(np.max(err / np.maximum(scale, 1e-30)))
          ok = bool(np.all(np.isfinite(err)) and np.all(err <= TOLERANCE * scale))
          failures += not ok
          cells = " | ".join(f"{e:.2e}" for e in err)
          out(f"| {length} | {batch} | {kind} | {name} | {cells} | {ratio:.2e} | "
              f"{'PASS' if ok else 'FAIL'} |")
      except Exception as e:  # pylint: disable=broad-except
        out(f"| {length} | {batch} | all | {name} | {error_text(e)} | | | | | FAIL |")
        failures += 1
      budget.record("correctness", name, length, time.perf_counter() - t0)
    del want
  return failures


def dense_mask_path(backend: str) -> str:
  """jax.nn.dot_product_attention's implementation for the dense-mask baseline."""
  return "cudnn" if backend in ("gpu", "cuda") else "xla"


def speed(out: Report, setting: Setting, names: list[str], budget: Budget, args):
  """(b). Returns {(L, row name): {kind: (fwd s, fwd+bwd s)}} and the dense row's name."""
  backend = jax.default_backend()
  timed = [n for n in names if backend != "cpu" or n in ("xla", "blockwise")]
  dense_impl = dense_mask_path(backend)
  dense = f"jax.nn dense mask ({dense_impl})"
  h, kv, d = setting.speed_heads
  out()
  out("## (b) Speed: MMA vs causal+document")
  out()
  out(f"bf16, {h} query heads, {kv} kv heads, head dim {d}; {setting.image_tokens} image tokens "
      f"per example; best of {setting.reps} after a warm-up, kinds measured round-robin. "
      "'causal' over packed rows is causal+document masking. The dense row is "
      f"jax.nn.dot_product_attention(implementation='{dense_impl}', mask=bool[B, 1, L, L]) with "
      "the mask built outside the timed call; '÷ dense' divides by that row's time of the same "
      "kind. Each time is followed by its useful TFLOP/s in parentheses: the query-key pairs "
      f"the kind's mask allows x 4·H·D FLOPs forward, {BACKWARD_FACTOR:g}x that backward.")
  if backend == "cpu":
    out(f"On the CPU only xla and blockwise are timed (the Pallas kernels run interpreted); "
        f"not timed: {', '.join(n for n in names if n not in timed) or 'none'}.")
  out()
  out("| L | batch | implementation | " + TIME_COLUMNS + " | MMA ÷ causal fwd | "
      "MMA ÷ causal fwd+bwd | causal ÷ dense fwd | MMA ÷ dense fwd | causal ÷ dense fwd+bwd | "
      "MMA ÷ dense fwd+bwd |")
  out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  results, flop = {}, {}
  for length in setting.speed_lengths:
    batch = max(1, setting.speed_tokens // length)
    rows, (q, k, v, dout) = packed_inputs(setting, batch, length, setting.speed_heads, seed=2)
    ids = {kind: kind_ids(rows, kind) for kind in SPEED_KINDS}
    flop[length] = {kind: useful_flops(allowed_pairs(rows, kind), h, d) for kind in SPEED_KINDS}
    for name in [dense] + timed:
      row = f"| {length} | {batch} | {name} |"
      # Dense paths hold L x L per row: the mask (1 byte) and its bf16 bias (cuDNN), or
      # about four f32 [B, H, L, L] arrays in XLA's fwd+bwd.
      if name == dense and dense_impl == "cudnn":
        gib = batch * length ** 2 * (1 + 2 + 2) / 2 ** 30
      elif name in (dense, "xla"):
        gib = 4 * 4 * batch * h * length ** 2 / 2 ** 30
      else:
        gib = 0.0
      reason = skip_reason(budget, "speed", name, length, gib, args)
      if reason:
        out(f"{row} {reason} |" + " |" * 9)
        continue
      t0 = time.perf_counter()
      try:
        results[length, name] = time_kinds(name, dense_impl if name == dense else None,
                                           rows, ids, (q, k, v, dout), setting.reps)
        out(speed_row(row, results, flop[length], length, name, dense))
      except Exception as e:  # pylint: disable=broad-except
        out(f"{row} {error_text(e)} |" + " |" * 9)
      budget.record("speed", name, length, time.perf_counter() - t0)
  return results, dense, timed, flop


def skip_reason(budget: Budget, section: str, name: str, length: int, gib: float, args):
  """Why an item is skipped (a dense path over --dense_budget_gib, or the time budget), or
  None."""
  if gib > args.dense_budget_gib:
    return (f"skipped: the dense path needs ~{gib:.1f} GiB at this length "
            f"(--dense_budget_gib={args.dense_budget_gib:g})")
  return budget.skip_reason(section, name, length)


def time_kinds(name: str, dense_impl: str | None, rows, ids, inputs, reps: int):
  """{kind: (fwd s, fwd+bwd s)} of one implementation (or the jax.nn dense-mask path)."""
  q, k, v, dout = inputs
  if dense_impl is None:
    fn = lambda q, k, v, ids: attention.attention(q, k, v, *ids, name)
    per_kind = [ids[kind] for kind in SPEED_KINDS]
  else:
    fn = lambda q, k, v, mask: jax.nn.dot_product_attention(
        q, k, v, mask=mask[:, None], implementation=dense_impl)
    vectors = [jnp.asarray(rows[n]) for n in tokens.ID_KEYS]
    per_kind = [_block(jax.jit(masks.dense_mask, static_argnums=4)(*vectors, kind))
                for kind in SPEED_KINDS]
  fwd = jax.jit(fn)

  @jax.jit
  def fwd_bwd(q, k, v, extra, dout):
    _, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, extra), q, k, v)
    return vjp(dout)

  # One compiled program per implementation: the kind only changes the ids' (mask's) values.
  t_f = best_times([lambda q, k, v, x=x: fwd(q, k, v, x) for x in per_kind], (q, k, v), reps)
  t_fb = best_times([lambda q, k, v, x=x: fwd_bwd(q, k, v, x, dout) for x in per_kind],
                    (q, k, v), reps)
  return {kind: (f, fb) for kind, f, fb in zip(SPEED_KINDS, t_f, t_fb)}


def _ratio(a: float | None, b: float | None) -> str:
  return "n/a" if a is None or b is None else f"{a / b:.2f}"


TIME_COLUMNS = ("causal fwd ms (TFLOP/s) | MMA fwd ms (TFLOP/s) | causal fwd+bwd ms (TFLOP/s) | "
                "MMA fwd+bwd ms (TFLOP/s)")


def time_cells(times, flop) -> str:
  """The four time cells of a row: {kind: (fwd s, fwd+bwd s)} with {kind: (fwd, fwd+bwd) FLOP}."""
  return " | ".join(time_cell(times[kind][i], flop[kind][i]) for i in (0, 1)
                    for kind in SPEED_KINDS)


def speed_row(row: str, results, flop, length: int, name: str, dense: str) -> str:
  r = results[length, name]
  base = results.get((length, dense))
  ms = time_cells(r, flop)
  over_dense = " | ".join(_ratio(r[kind][i], base[kind][i] if base else None)
                         for i in (0, 1) for kind in SPEED_KINDS)
  return (f"{row} {ms} | {_ratio(r['mma'][0], r['causal'][0])} | "
          f"{_ratio(r['mma'][1], r['causal'][1])} | {over_dense} |")


FLEX, SDPA = "torch flex_attention", "torch SDPA + dense bool mask"


def peers(out: Report, setting: Setting, budget: Budget, args, results, flop) -> int:
  """(d). Returns the number of failed peer mask checks (a peer that applies another mask
  makes every comparison with it meaningless)."""
  out()
  out("## (d) Peers: PyTorch on the same rows")
  out()
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    out("torch does not import here: no peer rows.")
    return 0
  dev = torch_peers.device()
  h, kv, d = setting.speed_heads
  auto = attention.resolve("auto", max(setting.speed_lengths))
  out(f"torch {torch.__version__} on {dev}, the rows, shapes and inputs of (b) "
      f"({'bf16' if dev == 'cuda' else 'float32: torch CPU kernels'}). {FLEX}: "
      "torch.nn.attention.flex_attention with a BlockMask from a mask_mod over the same id "
      "vectors (segment, query group, key group), "
      f"{'compiled' if dev == 'cuda' else 'eager'}, GQA by enable_gqa; its BlockMask is built "
      f"outside the timed call (build time below). {SDPA}: "
      "scaled_dot_product_attention with the bool mask [B, 1, L, L]. Times: best of "
      f"{setting.reps} after a warm-up ({'CUDA events' if dev == 'cuda' else 'wall clock'}), "
      "with useful TFLOP/s as in (b). Mask check: the mask_mod's allowed-key count of every "
      "query row equals masks.dense_mask's, per kind. Last column: the peer's MMA fwd+bwd time "
      f"÷ ours with auto ({auto}) from (b)."
      + (" On the CPU FlexAttention has no backward: its fwd+bwd is n/a." if dev == "cpu"
         else ""))
  out()
  out("| L | batch | peer | " + TIME_COLUMNS + " | MMA ÷ causal fwd+bwd | mask check | "
      "peer ÷ ours MMA fwd+bwd |")
  out("|---|---|---|---|---|---|---|---|---|---|")
  failures, notes = 0, []
  for length in setting.speed_lengths:
    batch = max(1, setting.speed_tokens // length)
    rows, inputs = packed_inputs(setting, batch, length, setting.speed_heads, seed=2)
    vectors = [jnp.asarray(rows[n]) for n in tokens.ID_KEYS]
    dense = {kind: jax.jit(masks.dense_mask, static_argnums=4)(*vectors, kind)
             for kind in SPEED_KINDS}
    if length not in flop:
      flop[length] = {kind: useful_flops(int(jnp.sum(dense[kind])), h, d)
                      for kind in SPEED_KINDS}
    for peer in (FLEX, SDPA):
      row = f"| {length} | {batch} | {peer} |"
      # SDPA holds the bool mask and its f32 scores, twice over for the backward
      gib = batch * length ** 2 * (1 + 2 * 4) / 2 ** 30 if peer == SDPA else 0.0
      reason = skip_reason(budget, "peers", peer, length, gib, args)
      if reason:
        out(f"{row} {reason} |" + " |" * 6)
        continue
      t0 = time.perf_counter()
      try:
        times, check = {}, "n/a"
        for kind in SPEED_KINDS:
          if peer == FLEX:
            q_ids, k_ids = kind_ids(rows, kind)
            ids = (q_ids.segment, q_ids.group[:, 0], k_ids.group[:, 0])
            fwd, fwd_bwd, build_s, counts = torch_peers.flex_times(ids, inputs, setting.reps)
            same = np.array_equal(counts, np.asarray(jnp.sum(dense[kind], axis=-1)))
            failures += not same
            check = ("PASS" if same else "FAIL") if check in ("n/a", "PASS") else check
            notes.append(f"{FLEX} BlockMask build, L={length}, {kind}: {build_s * 1e3:.1f} ms")
          else:
            fwd, fwd_bwd = torch_peers.sdpa_dense_times(np.asarray(dense[kind]), inputs,
                                                        setting.reps)
          times[kind] = (fwd, fwd_bwd)
        ours = results.get((length, auto))
        over = _ratio(times["mma"][1], ours["mma"][1] if ours else None)
        out(f"{row} {time_cells(times, flop[length])} | "
            f"{_ratio(times['mma'][1], times['causal'][1])} | {check} | {over} |")
        results[length, peer] = times
      except Exception as e:  # pylint: disable=broad-except
        out(f"{row} {error_text(e)} |" + " |" * 6)
        failures += peer == FLEX  # no mask check happened
      budget.record("peers", peer, length, time.perf_counter() - t0)
  out()
  for note in notes:
    out(f"- {note}")
  return failures


def train_step_check(out: Report, setting: Setting, budget: Budget, args):
  """(c). Returns {kind: step seconds} of the kinds that ran."""
  out()
  out("## (c) Train step")
  out()
  # pylint: disable=g-import-not-at-top
  try:  # ml_collections (configs) and orbax (the train state): absent on a bare image
    from mma_jax import config as config_lib
    from mma_jax import sharding
    from mma_jax.models import build, flops, presets, vlm
    from mma_jax.train import memory, optimizer
    from mma_jax.train import step as step_lib
  except ImportError as e:
    out("| kind | step ms |")
    out("|---|---|")
    out(f"| all | {error_text(e)} (the train step needs ml_collections and orbax-checkpoint) |")
    return {}
  # pylint: enable=g-import-not-at-top
  config = config_lib.base_config()
  config.model = presets.model(setting.model)
  config.model.llm.attention = args.train_attention
  if args.train_loss_chunk is not None:
    config.model.llm.loss_chunk = args.train_loss_chunk
  cfg = build.model_config(config, TINY_VOCAB)
  length, batch_size = setting.train_length, setting.train_batch
  device = jax.devices()[0]
  peak = flops.peak_flops(device.device_kind)
  resolved = attention.resolve(cfg.llm.attention, length)
  out(f"Preset {setting.model} (LLM {cfg.llm.layers} x {cfg.llm.hidden}, {cfg.llm.dtype}, "
      f"remat {cfg.llm.remat}; vision {cfg.vision.layers} x {cfg.vision.hidden} at "
      f"{cfg.vision.image_size} px, {cfg.tokens_per_image} tokens per image), attention "
      f"'{cfg.llm.attention}' -> {resolved}; {batch_size} packed rows of {length} tokens; "
      f"config.optim of base_config (freeze {tuple(config.optim.freeze)}); one device. "
      f"Step time: best of {setting.train_reps}, kinds alternating, state donated. tokens/s "
      "counts all B x L slots; MFU = model FLOPs (mma_jax.models.flops.train_step: attention "
      "over whole rows, every image slot) / step time / peak "
      f"({'%.3g FLOP/s' % peak if peak else 'unknown for this device: n/a'}); useful MFU "
      "counts the LLM's attention over the pairs the kind's mask allows and filled image "
      "slots only; loss: the kind's last step (one state trains on through all steps).")
  out()
  out("| kind | step ms | tokens/s | MFU | useful MFU | loss | compile + first step s |")
  out("|---|---|---|---|---|---|---|")
  reason = budget.skip_reason("train", setting.model, length, setting.train_guess_s)
  if reason:
    out(f"| all | {reason} | | | | | |")
    return {}
  t0 = time.perf_counter()
  times = {}
  try:
    mesh = sharding.make_mesh((1, 1, 1), [device])
    rules = sharding.make_rules()
    with sharding.use(mesh, rules):
      abstract = build.param_shardings(cfg, mesh, rules)[0]
      opt, _ = optimizer.make(config.optim, 1000, abstract)
      trainable = optimizer.trainable_mask(abstract, config.optim.freeze)
      shardings = jax.tree_util.tree_map(
          lambda x: x.sharding, step_lib.abstract_state(cfg, opt, mesh, rules))
      model = vlm.VLM(cfg)
      state = step_lib.init_state(model, opt, config.seed, shardings, mesh, rules)
      host = train_batch(np.random.default_rng(3), batch_size, length, cfg.tokens_per_image,
                         cfg.vision.image_size, cfg.llm.vocab_size, setting.quick)
      images = host["images"].shape[1]
      host["image_valid"] = np.ones((batch_size, images), bool)
      shapes = tokens.abstract_batch(batch_size, length, images, cfg.vision.image_size,
                                     train=True)
      host = {n: np.asarray(host[n], s.dtype) for n, s in shapes.items()}
      batch = sharding.put_batch(host, mesh)
      trains = memory.trainable_components(abstract, config.optim.freeze)
      step_flops = flops.train_step(cfg, batch_size, length, images, trains)
      filled = int(np.sum(host["image_valid"]))
      useful = {kind: flops.train_step(cfg, batch_size, length, images, trains,
                                       real_images=filled / batch_size,
                                       pairs=allowed_pairs(host, kind) / batch_size)
                for kind in SPEED_KINDS}
      steps, compile_s, losses, samples = {}, {}, {}, {}
      for kind in SPEED_KINDS:
        t = time.perf_counter()
        steps[kind] = step_lib.jit_train_step(model, opt, kind, 1, trainable, shardings, mesh)
        state, metrics = _block(steps[kind](state, batch))  # compile + warm up
        compile_s[kind] = time.perf_counter() - t
        samples[kind] = []
      for _ in range(setting.train_reps):
        for kind in SPEED_KINDS:  # alternating: drift in the machine's load hits both alike
          t = time.perf_counter()
          state, metrics = _block(steps[kind](state, batch))
          samples[kind].append(time.perf_counter() - t)
          losses[kind] = float(metrics["loss"])
    mfu = lambda f, t: f"{f / t / peak:.1%}" if peak else "n/a"
    for kind in SPEED_KINDS:
      times[kind] = min(samples[kind])
      out(f"| {kind} | {times[kind] * 1e3:.1f} | {batch_size * length / times[kind]:.0f} | "
          f"{mfu(step_flops, times[kind])} | {mfu(useful[kind], times[kind])} | "
          f"{losses[kind]:.3f} | {compile_s[kind]:.1f} |")
    out()
    out(f"Train step MMA ÷ causal: {times['mma'] / times['causal']:.3f}x step time "
        f"({step_flops:.3g} model FLOPs per step by the convention, useful "
        f"{useful['mma']:.3g} MMA / {useful['causal']:.3g} causal; {images} image slots per "
        f"row, {filled} filled in the batch).")
  except Exception as e:  # pylint: disable=broad-except
    out(f"| all | {error_text(e)} | | | | | |")
  budget.record("train", setting.model, length, time.perf_counter() - t0)
  if "peers" in args.sections:
    train_peer(out, setting, budget, cfg, host, times, flops, peak)
  return times


def train_peer(out: Report, setting: Setting, budget: Budget, cfg, host, ours, flops, peak):
  """(c), the peer row: transformers' LlamaForCausalLM at the preset's LLM dims, same rows."""
  out()
  try:
    import transformers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    out("transformers / torch do not import here: no peer train step.")
    return
  llm = cfg.llm
  batch, length = host["tokens"].shape
  reason = budget.skip_reason("train", "peer", length, setting.train_guess_s / 3)
  if reason:
    out(f"Peer train step: {reason}.")
    return
  t0 = time.perf_counter()
  out("| peer (LLM only) | kind | step ms | tokens/s | MFU (LLM FLOPs) | parameters | first loss |")
  out("|---|---|---|---|---|---|---|")
  dims = dict(hidden=llm.hidden, layers=llm.layers, heads=llm.heads, kv_heads=llm.kv_heads,
              head_dim=llm.head_dim, mlp_dim=llm.mlp_dim, vocab_size=llm.vocab_size,
              rope_theta=llm.rope.theta)
  # The LLM's FLOPs by the same convention: forward and a backward of 2x (all of it trains).
  llm_flops = 3 * flops.llm(llm, length).total * batch
  vectors = [jnp.asarray(host[n]) for n in tokens.ID_KEYS]
  name = f"transformers {_version('transformers')} LlamaForCausalLM, sdpa, AKI's 4D mask"
  for kind in SPEED_KINDS:
    try:
      allowed = np.asarray(jax.jit(masks.dense_mask, static_argnums=4)(*vectors, kind))
      step_s, params, loss = torch_peers.llama_train_step(
          dims, allowed, host["tokens"], host["positions"], host["loss_mask"],
          setting.train_reps)
      mfu = f"{llm_flops / step_s / peak:.1%}" if peak else "n/a"
      out(f"| {name} | {kind} | {step_s * 1e3:.1f} | {batch * length / step_s:.0f} | {mfu} | "
          f"{params / 1e9:.3g} B | {loss:.3f} |")
    except Exception as e:  # pylint: disable=broad-except
      out(f"| {name} | {kind} | {error_text(e)} | | | | |")
  if ours:
    out()
    out("Ours in the same table does the LLM's work plus the vision tower and connector over "
        f"every image slot: ours {ours['mma'] * 1e3:.1f} ms MMA step above.")
  budget.record("train", "peer", length, time.perf_counter() - t0)


def goals(out: Report, setting: Setting, results, dense: str, timed: list[str], flop) -> None:
  """The goals, each with its measured value: reported, never asserted."""
  length = 8192 if 8192 in setting.speed_lengths else max(setting.speed_lengths)
  kernels = [n for n in timed if n != "xla"]  # xla is a dense path, not a kernel
  auto = attention.resolve("auto", length)
  mark = lambda n: f"{n} (auto)" if n == auto else n

  def each(title: str, value, goal: str):
    """One goal line and a line per kernel: value(times) -> (text, met) or None."""
    out(f"- {title} at L={length}:")
    for name in kernels:
      got = value(results[length, name]) if (length, name) in results else None
      if got is None:
        out(f"  - {mark(name)}: not measured")
      else:
        out(f"  - {mark(name)}: {got[0]}: {'met' if got[1] else 'not met'} ({goal})")
    if not kernels:
      out("  - no kernel timed here")

  out()
  out("## Goals")
  out()
  ratio = lambda r: r["mma"][1] / r["causal"][1]
  each("MMA fwd+bwd ÷ causal+document with the same kernel",
       lambda r: (f"{ratio(r):.2f}x", ratio(r) <= GOAL_MMA_OVER_CAUSAL),
       f"goal <= {GOAL_MMA_OVER_CAUSAL}x")
  base = results.get((length, dense))
  each(f"MMA fwd+bwd vs the dense-mask path ({dense})",
       lambda r: None if base is None else (f"{base['mma'][1] / r['mma'][1]:.2f}x faster",
                                            base["mma"][1] / r["mma"][1] >= GOAL_DENSE_OVER_MMA),
       f"goal >= {GOAL_DENSE_OVER_MMA}x")
  tflops = lambda r: flop[length]["mma"][1] / r["mma"][1] / 1e12
  each("MMA fwd+bwd useful TFLOP/s",
       lambda r: (f"{tflops(r):.3g} TFLOP/s", tflops(r) >= GOAL_USEFUL_TFLOPS),
       f"goal >= {GOAL_USEFUL_TFLOPS:g} on an H100 / H200")
  flex = results.get((length, FLEX))
  each(f"MMA fwd+bwd vs {FLEX}",
       lambda r: None if flex is None or flex["mma"][1] is None else (f"{flex['mma'][1] / r['mma'][1]:.2f}x faster",
                                            flex["mma"][1] / r["mma"][1] >= GOAL_OVER_FLEX),
       f"goal >= {GOAL_OVER_FLEX}x")


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true",
                      help="CPU-sized: L 256 / 512, 4 heads, the tiny model (a minute or two)")
  parser.add_argument("--out", default="", help="also write the report to this file")
  parser.add_argument("--budget_s", type=float, default=420.0,
                      help="skip the remaining heavy items past this many seconds")
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help="comma-separated subset of " + ", ".join(SECTIONS))
  parser.add_argument("--implementations", default="",
                      help="comma-separated subset of attention.IMPLEMENTATIONS (default: all)")
  parser.add_argument("--dense_budget_gib", type=float, default=8.0,
                      help="skip a dense path whose L x L arrays would need more")
  parser.add_argument("--train_attention", default="auto",
                      help="config.model.llm.attention of the train step")
  parser.add_argument("--train_loss_chunk", type=int, default=None,
                      help="config.model.llm.loss_chunk of the train step (default: the "
                           "preset's; -1 = the whole logits at once)")
  parser.add_argument("--speed_lengths", default="",
                      help="comma-separated L of (b) and (d) (default: the setting's)")
  args = parser.parse_args(argv)
  args.sections = [s for s in args.sections.split(",") if s]
  for s in args.sections:
    if s not in SECTIONS:
      parser.error(f"--sections: unknown {s!r}; use {', '.join(SECTIONS)}")
  args.implementations = [n for n in args.implementations.split(",") if n]
  for n in args.implementations:
    attention.resolve(n, 0)  # unknown names fail here, before anything runs
  return args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  setting = TINY if args.tiny else FULL
  if args.speed_lengths:
    setting = dataclasses.replace(
        setting, speed_lengths=tuple(int(n) for n in args.speed_lengths.split(",")))
  out = Report()
  budget = Budget.for_sections(args.budget_s, setting, args.sections)
  failures = 0
  try:
    header(out, setting, argv)
    names = implementations(out, args.implementations)
    logs.quiet_libraries()  # tokamax's autotuning-miss WARNINGs, as in a run
    results, dense, timed, flop = {}, "", [], {}
    if "correctness" in args.sections:
      failures = correctness(out, setting, names, budget)
    if "speed" in args.sections:
      results, dense, timed, flop = speed(out, setting, names, budget, args)
    if "peers" in args.sections:
      failures += peers(out, setting, budget, args, results, flop)
    if "train" in args.sections:
      train_step_check(out, setting, budget, args)
    if "speed" in args.sections:
      goals(out, setting, results, dense, timed, flop)
    out()
    out(f"Correctness: {'all PASS' if not failures else f'{failures} FAIL'}; "
        f"total {budget.elapsed():.0f} s.")
  finally:  # what was measured reaches the file even when something above raised
    if args.out:
      with open(args.out, "w", encoding="utf-8") as f:
        f.write(out.text())
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
