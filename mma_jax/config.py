"""The common base config. configs/*.py start from base_config() and override; never copy it."""
from __future__ import annotations

import ml_collections

from mma_jax.data.shapes import generate
from mma_jax.evaluate import scoring
from mma_jax.models import presets
from mma_jax.models.configs import REMAT_POLICIES
from mma_jax.tokens import KINDS, ORDERS, STAGES

DATA_SOURCES = ("shapes", "records")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "sft"            # 'pt' (captions) or 'sft' (conversations)
  c.mask = "mma"             # 'causal' | 'mma' | 'prefix'
  c.init_from = ""           # PT workdir (or checkpoint dir) to start SFT from; '' = scratch
  c.seed = 0
  c.model = presets.model("tiny")

  c.data = ml_collections.ConfigDict()
  c.data.source = "shapes"   # 'shapes' (built-in benchmark) | 'records' (imported, see mixture)
  c.data.dir = ""            # TFDS data_dir; '' = <workdir>/../mma_jax_data shared by runs;
                             # records: the root the mixture's names are relative to
  c.data.mixture = ""        # records: 'NAME=WEIGHT,...' or a preset ('aki_sft'); data/mixture.py
  c.data.tokenizer = ""      # path to a tokenizer.json; '' = the shapes benchmark's word tokenizer
  c.data.template = "shapes" # chat template of that tokenizer: shapes | aki | llama3 | llama3.1 |
                             # qwen2.5 | phi3.5 (templates.py)
  c.data.train_size = 6000
  c.data.validation_size = 200
  c.data.test_size = 600     # records: validation/test_size = the most evaluated per source
  c.data.seed = 0            # the benchmark's generator seed
  c.data.difficulty = "easy" # shapes: 'easy' | 'hard' (4 x 4 grid, distractors; best at 64 px)
  c.data.order = "I&T"       # 'I&T' | 'T&I' | 'DOT' (T&I steps, then the same steps in I&T)
  c.data.pack_length = 160   # tokens per training row
  c.data.max_images = 4      # image slots per training row (AnyRes: each tile takes one)
  # AnyRes: ((rows, cols), ...) tile grids to choose from per image, e.g. ((1, 2), (2, 1),
  # (2, 2)); () = one image at the tower's size. render_size: the shapes benchmark's images in
  # pixels (0 = the tower's size), e.g. 64 with a 32 px tower to give tiling something to do.
  c.data.anyres_grids = ()
  c.data.render_size = 0
  c.data.packing = True      # False: one example per row, padded
  c.data.skip_bad_records = False
  c.data.pt_prompt = ""      # PT: an instruction after the images (prompt text, so under mask
                             # 'mma' the images see it), e.g. "what is there ?"; '' = none
  c.data.shuffle_seed = 0
  c.data.prefetch = 2        # batches prefetched by a background thread; 0 = none

  # LoRA: low-rank adapters on the kernels whose module paths end with a full match of a target
  # regex; rank 0 = off. With adapters, only they train (optim.freeze is not needed).
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0
  c.lora.alpha = 16.0
  c.lora.llm_targets = ("layers/(q|k|v|o|gate|up|down)",)
  c.lora.vision_targets = ()   # e.g. ("layers/(q|k|v|o|fc1|fc2)",) to adapt the tower too

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 100
  c.optim.min_lr_ratio = 0.05
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.clip_norm = 1.0
  c.optim.freeze = ("vision/.*",)   # regexes, full match on 'vision/layers/q/kernel'-style paths
  # Per-group peak lr and weight decay: ((name, regex, lr, weight_decay), ...), first full match
  # wins, e.g. (("vision", "vision/.*", 2e-6, 0.0),) with freeze=() tunes the vision tower slowly.
  c.optim.groups = ()
  # Frozen parameters stored in this dtype ('' = float32): 'bfloat16' halves their memory
  # (LoRA's base weights); the trained ones stay float32.
  c.optim.frozen_dtype = ""

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1200       # per order; DOT runs twice as many
  c.train.batch_size = 16
  c.train.grad_accum = 1     # micro-batches per step (batch_size must divide)
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.keep = 2
  c.train.async_checkpoint = True
  c.train.eval_every = 0     # validation every N steps; 0 = only the final test evaluation
  c.train.peak_flops = 0.0   # per device, for MFU; 0 = unknown (not reported)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 50
  c.eval.max_new_tokens = 3
  c.eval.prompt_length = 112
  c.eval.max_images = 2
  c.eval.skip_bad_rows = False  # benchmark TSV rows that cannot be read: False = error
  # VLMEvalKit benchmarks scored at every evaluation, through the evaluate CLI's own path:
  # 'pope,mme=/data/MME.tsv' (name or name=TSV; no path = $LMUData/<VLMEvalKit name>.tsv).
  c.eval.benchmarks = ""
  c.eval.rule = ""           # scoring rule; '' = vlmevalkit (mma_jax.evaluate.scoring.RULES)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices
  # (logical name, mesh axes) pairs overriding mma_jax.sharding.DEFAULT_RULES, e.g.
  # (("embed", None),) keeps weights unsharded on fsdp (plain data parallelism on that axis).
  c.mesh.rules = ()
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Impossible values get an error naming the key and what to use instead."""
  def need(ok, key, msg):
    if not ok:
      raise ValueError(f"config.{key}={c_get(key)!r}: {msg}")

  def c_get(key):
    node = c
    for part in key.split("."):
      node = node[part]
    return node

  need(c.stage in STAGES, "stage", f"use one of {STAGES}")
  need(c.mask in KINDS, "mask", f"use one of {KINDS}")
  need(c.data.order in ORDERS, "data.order", f"use one of {ORDERS}")
  need(c.data.source in DATA_SOURCES, "data.source", f"use one of {DATA_SOURCES}")
  need(c.data.difficulty in generate.DIFFICULTIES, "data.difficulty",
       f"use one of {generate.DIFFICULTIES}")
  need(c.data.source != "records" or c.data.mixture.strip(), "data.mixture",
       "data.source='records' needs the imported sources, e.g. 'aki_sft' or 'NAME=1'")
  need(c.train.steps > 0, "train.steps", "must be positive")
  need(c.train.batch_size > 0, "train.batch_size", "must be positive")
  need(c.train.grad_accum > 0 and c.train.batch_size % c.train.grad_accum == 0,
       "train.grad_accum", f"must divide train.batch_size={c.train.batch_size}")
  need(c.optim.lr > 0, "optim.lr", "must be positive")
  need(c.optim.frozen_dtype in ("", "float32", "bfloat16"), "optim.frozen_dtype",
       "use '', 'float32' or 'bfloat16'")
  need(c.lora.rank >= 0, "lora.rank", "must be 0 (off) or positive")
  need(c.data.pack_length > 0, "data.pack_length", "must be positive")
  need(c.data.max_images >= 2, "data.max_images", "must be at least 2 (two-image questions)")
  need(c.train.checkpoint_every > 0, "train.checkpoint_every", "must be positive")
  need(c.train.log_every > 0, "train.log_every", "must be positive")
  need(c.eval.rule in ("",) + scoring.RULES, "eval.rule",
       f"use '' (= {scoring.DEFAULT_RULE}) or one of {scoring.RULES}")
  scoring.parse_list(c.eval.benchmarks)  # an unknown name: an error naming the key
  for tower in ("llm", "vision"):
    need(c.model[tower].get("remat", "none") in REMAT_POLICIES, f"model.{tower}.remat",
         f"use one of {REMAT_POLICIES}")
