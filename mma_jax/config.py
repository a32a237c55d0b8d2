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
  """The run config every configs/*.py starts from; one section per concern below."""
  c = ml_collections.ConfigDict()
  c.stage = "sft"            # 'pt' (captions) or 'sft' (conversations)
  c.mask = "mma"             # 'causal' | 'mma' | 'prefix'
  c.init_from = ""           # PT workdir (or checkpoint dir) to start SFT from; '' = scratch
  c.seed = 0
  c.model = presets.model("tiny")
  c.data = _data()
  c.lora = _lora()
  c.optim = _optim()
  c.train = _train()
  c.eval = _eval()
  c.mesh = _mesh()
  return c


def _data() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.source = "shapes"   # 'shapes' (built-in benchmark) | 'records' (imported, see mixture)
  d.dir = ""            # TFDS data_dir; '' = <workdir>/../mma_jax_data shared by runs;
                        # records: the root the mixture's names are relative to
  d.mixture = ""        # records: 'NAME=WEIGHT,...' or a preset ('aki_sft'); data/mixture.py
  d.tokenizer = ""      # path to a tokenizer.json; '' = the shapes benchmark's word tokenizer
  d.template = "shapes" # chat template of that tokenizer: shapes | aki | llama3 | llama3.1 |
                        # qwen2.5 | phi3.5 (templates.py)
  d.train_size = 6000
  d.validation_size = 200
  d.test_size = 600     # records: validation/test_size = the most evaluated per source
  d.seed = 0            # the benchmark's generator seed
  d.difficulty = "easy" # shapes: 'easy' | 'hard' (4 x 4 grid, distractors; best at 64 px)
  # The hard benchmark's difficulty dials (shapes.generate.Dials); these defaults are the
  # committed 'hard' benchmark, record for record; the easy one takes none. Other values get
  # TFDS files of their own (the config name says which dials differ).
  d.objects_min = 6     # filler tops a scene up to n objects, n uniform in [min, max]; the
  d.objects_max = 12    # question's own objects come first (count_filter plants 10)
  d.grid = 4            # rows = columns: 4 | 5 | 6, at least 8 px a cell
  d.distractors = 1.0   # share in [0, 1] of the look-alikes attribute_color, attribute_shape
                        # and exist_adversarial plant on purpose that are kept
  d.question_types = "" # hard types cycled through, comma-separated ('relation,exist_random');
                        # '' = all 7
  d.turns = 1           # 2: a first question (the shape in one cell), then the scored one
  d.on_the_fly = False  # shapes: generate every split's records by index (no files, any size)
                        # instead of writing TFDS ArrayRecord files; the same records, in index
                        # order (TFDS orders its files its own way, so shuffles differ)
  d.order = "I&T"       # 'I&T' | 'T&I' | 'DOT' (T&I steps, then the same steps in I&T)
  d.pack_length = 160   # tokens per training row
  d.max_images = 4      # image slots per training row (AnyRes: each tile takes one)
  # AnyRes: ((rows, cols), ...) tile grids to choose from per image, e.g. ((1, 2), (2, 1),
  # (2, 2)); () = one image at the tower's size. render_size: the shapes benchmark's images in
  # pixels (0 = the tower's size), e.g. 64 with a 32 px tower to give tiling something to do.
  d.anyres_grids = ()
  d.render_size = 0
  d.video_frames = 0    # shapes: > 1 makes every image a clip of this many frames (objects
                        # appearing over time; the last frame the whole scene), one media span
  d.packing = True      # False: one example per row, padded
  d.skip_bad_records = False
  d.pt_prompt = ""      # PT: an instruction after the images (prompt text, so under mask
                        # 'mma' the images see it), e.g. "what is there ?"; '' = none
  d.shuffle_seed = 0
  d.prefetch = 2        # batches prefetched by a background thread; 0 = none
  d.cache_shapes = True # shapes: keep the encoded training examples in memory after their first
                        # read (about 13 KB each at 64 px), instead of decoding them every epoch
  d.read_threads = 4    # Grain's reader threads, and the examples they read ahead (see
  d.read_ahead = 64     # data/pipeline.train_dataset); batches are the same whatever these are
  return d


def _lora() -> ml_collections.ConfigDict:
  # LoRA: low-rank adapters on the kernels whose module paths end with a full match of a target
  # regex; rank 0 = off. With adapters, only they train (optim.freeze is not needed).
  l = ml_collections.ConfigDict()
  l.rank = 0
  l.alpha = 16.0
  l.llm_targets = ("layers/(q|k|v|o|gate|up|down)",)
  l.vision_targets = ()   # e.g. ("layers/(q|k|v|o|fc1|fc2)",) to adapt the tower too
  return l


def _optim() -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.lr = 3e-3
  o.warmup_steps = 100
  o.min_lr_ratio = 0.05
  o.weight_decay = 1e-4
  o.b1 = 0.9
  o.b2 = 0.98
  o.clip_norm = 1.0
  o.freeze = ("vision/.*",)   # regexes, full match on 'vision/layers/q/kernel'-style paths
  # Per-group peak lr and weight decay: ((name, regex, lr, weight_decay), ...), first full match
  # wins, e.g. (("vision", "vision/.*", 2e-6, 0.0),) with freeze=() tunes the vision tower slowly.
  o.groups = ()
  # Frozen parameters stored in this dtype ('' = float32): 'bfloat16' halves their memory
  # (LoRA's base weights); the trained ones stay float32.
  o.frozen_dtype = ""
  return o


def _train() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.steps = 1200       # per order; DOT runs twice as many
  t.batch_size = 16
  t.grad_accum = 1     # micro-batches per step (batch_size must divide)
  t.log_every = 50
  t.checkpoint_every = 500
  t.keep = 2           # checkpoints kept (>= 2: a damaged newest one has one to fall back on)
  t.async_checkpoint = True
  t.eval_every = 0     # validation every N steps; 0 = only the final test evaluation
  t.peak_flops = 0.0   # per device, for MFU; 0 = unknown (not reported)
  return t


def _eval() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.batch_size = 50
  e.max_new_tokens = 3
  e.prompt_length = 112
  e.max_images = 2
  e.skip_bad_rows = False  # benchmark TSV rows that cannot be read: False = error
  # VLMEvalKit benchmarks scored at every evaluation, through the evaluate CLI's own path:
  # 'pope,mme=/data/MME.tsv' (name or name=TSV; no path = $LMUData/<VLMEvalKit name>.tsv).
  e.benchmarks = ""
  e.rule = ""           # scoring rule; '' = vlmevalkit (mma_jax.evaluate.scoring.RULES)
  # shapes: also score the first N training records after training, as train/<metric> next
  # to the test metrics (does the model fit what it trained on?); 0 = not
  e.train_examples = 0
  return e


def _mesh() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices
  # (logical name, mesh axes) pairs overriding mma_jax.sharding.DEFAULT_RULES, e.g.
  # (("embed", None),) keeps weights unsharded on fsdp (plain data parallelism on that axis).
  m.rules = ()
  return m


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
  for key, msg in generate.dial_problems(c.data, c.data.render_size or c.model.vision.image_size):
    need(False, key, msg)
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
  need(c.data.read_threads >= 1, "data.read_threads", "must be at least 1")
  need(c.data.read_ahead >= 1, "data.read_ahead", "must be at least 1")
  need(c.data.max_images >= 2, "data.max_images", "must be at least 2 (two-image questions)")
  need(c.train.checkpoint_every > 0, "train.checkpoint_every", "must be positive")
  need(c.train.log_every > 0, "train.log_every", "must be positive")
  need(c.train.keep >= 2, "train.keep", "must be at least 2: the newest checkpoint is never "
       "the only one kept, so a resume has an older one to fall back on if it is damaged")
  need(c.eval.rule in ("",) + scoring.RULES, "eval.rule",
       f"use '' (= {scoring.DEFAULT_RULE}) or one of {scoring.RULES}")
  scoring.parse_list(c.eval.benchmarks)  # an unknown name: an error naming the key
  need(c.eval.train_examples >= 0 and (c.eval.train_examples == 0 or c.data.source == "shapes"),
       "eval.train_examples", "must be 0, or positive with data.source='shapes' (imported "
       "records are mixed for training, not scored per source)")
  for tower in ("llm", "vision"):
    need(c.model[tower].get("remat", "none") in REMAT_POLICIES, f"model.{tower}.remat",
         f"use one of {REMAT_POLICIES}")
