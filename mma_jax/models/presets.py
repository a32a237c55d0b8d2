"""Model presets: the `config.model` section for the paper's backbones, AKI-4B and the tiny default.

`model(name)` returns a fresh ConfigDict {vision, connector, llm}; configs/*.py assign it to
`c.model`. Dimensions are those of the released checkpoints (their config.json files); a model
converted with `python -m mma_jax.convert` carries its own exact config next to its weights, so
these presets are for training from scratch, memory estimates and sanity checks.
"""
from __future__ import annotations

import ml_collections

# SigLIP so400m-patch14-384: the vision tower of every paper backbone.
SIGLIP_SO400M = dict(image_size=384, patch_size=14, hidden=1152, layers=27, heads=16,
                     mlp_dim=4304, ln_eps=1e-6, dtype="bfloat16")
# AKI's Perceiver resampler: 144 latents, depth 6, 8 heads of 64 (outputs the LLM width).
PERCEIVER_144 = dict(kind="perceiver", depth=6, heads=8, dim_head=64, num_latents=144, ff_mult=4,
                     ln_eps=1e-5)

_LLAMA3_ROPE = dict(kind="llama3", theta=500000.0, factor=32.0, low_freq_factor=1.0,
                    high_freq_factor=4.0, original_max_position_embeddings=8192,
                    max_position_embeddings=131072)

# Phi-3.5-mini-instruct LongRoPE factors (config.json of the release), one per frequency pair.
PHI35_SHORT_FACTOR = (
    1.0, 1.02, 1.03, 1.03, 1.05, 1.05, 1.05, 1.05, 1.05, 1.07, 1.1, 1.11, 1.16, 1.16, 1.17, 1.29,
    1.34, 1.68, 1.79, 1.82, 1.85, 1.88, 1.91, 1.94, 1.99, 2.02, 2.02, 2.02, 2.02, 2.02, 2.02,
    2.03, 2.03, 2.03, 2.03, 2.03, 2.03, 2.03, 2.03, 2.03, 2.08, 2.09, 2.19, 2.22, 2.59, 2.73,
    2.75, 2.84)
PHI35_LONG_FACTOR = (
    1.08, 1.11, 1.14, 1.34, 1.59, 1.6, 1.62, 2.62, 3.23, 3.23, 4.79, 7.4, 7.7, 9.09, 12.2, 17.67,
    24.46, 28.57, 30.42, 30.84, 32.59, 32.93, 42.32, 44.96, 50.34, 50.45, 57.55, 57.93, 58.21,
    60.14, 62.61, 62.62, 62.71, 63.14, 63.14, 63.77, 63.93, 63.96, 63.97, 64.03, 64.07, 64.08,
    64.12, 64.41, 64.48, 64.51, 64.53, 64.84)
_PHI35_ROPE = dict(kind="longrope", theta=10000.0, original_max_position_embeddings=4096,
                   max_position_embeddings=131072, short_factor=PHI35_SHORT_FACTOR,
                   long_factor=PHI35_LONG_FACTOR)

LLMS = {
    "llama3.2-1b": dict(vocab_size=128256, hidden=2048, layers=16, heads=32, kv_heads=8,
                        head_dim=64, mlp_dim=8192, rms_eps=1e-5, rope=_LLAMA3_ROPE,
                        tie_embeddings=True),
    "llama3.2-3b": dict(vocab_size=128256, hidden=3072, layers=28, heads=24, kv_heads=8,
                        head_dim=128, mlp_dim=8192, rms_eps=1e-5, rope=_LLAMA3_ROPE,
                        tie_embeddings=True),
    "qwen2.5-7b": dict(vocab_size=152064, hidden=3584, layers=28, heads=28, kv_heads=4,
                       head_dim=128, mlp_dim=18944, rms_eps=1e-6,
                       rope=dict(kind="default", theta=1000000.0), qkv_bias=True),
    "phi3.5-mini": dict(vocab_size=32064, hidden=3072, layers=32, heads=32, kv_heads=32,
                        head_dim=96, mlp_dim=8192, rms_eps=1e-5, rope=_PHI35_ROPE),
}


def _vlm(llm: dict, vision=SIGLIP_SO400M, connector=PERCEIVER_144, **llm_overrides):
  llm = {**llm, "dtype": "bfloat16", "remat": "full", **llm_overrides}
  vision = {**vision, "remat": "full"}
  return {"vision": dict(vision), "connector": dict(connector), "llm": llm}


def _tiny():
  """The built-in default: trains on a 2-core CPU in minutes. vocab_size 0 = the tokenizer's."""
  return {
      # unroll=0: no layer loop (measured faster on the CPU, same results; benchmarks/study_step)
      "vision": dict(image_size=32, patch_size=8, hidden=64, layers=2, heads=4, mlp_dim=128,
                     unroll=0),
      "connector": dict(kind="mlp"),
      "llm": dict(vocab_size=0, hidden=128, layers=3, heads=4, kv_heads=2, head_dim=32,
                  mlp_dim=256, dtype="float32", remat="none", unroll=0),
  }


_PRESETS = {
    "tiny": _tiny,
    # ~1.4B with the vision tower: the "~1B" preset for MFU / kernel benchmarks.
    "llama3.2-1b": lambda: _vlm(LLMS["llama3.2-1b"]),
    "llama3.2-3b-siglip": lambda: _vlm(LLMS["llama3.2-3b"]),
    "qwen2.5-7b-siglip": lambda: _vlm(LLMS["qwen2.5-7b"]),
    "phi3.5-mini-siglip": lambda: _vlm(LLMS["phi3.5-mini"]),
    # Sony/AKI-4B-phi-3.5-mini: Phi-3.5 whose vocabulary is the tokenizer's initial 32012 ids
    # (<pad> added) plus <image> and <|endofchunk|>, with AKI's output bias.
    "aki-4b": lambda: _vlm(LLMS["phi3.5-mini"], vocab_size=32014, lm_head_bias=True),
}
NAMES = tuple(_PRESETS)


def model(name: str) -> ml_collections.ConfigDict:
  """The config.model section of preset `name` (one of NAMES)."""
  if name not in _PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; choose one of {NAMES}.")
  model = _PRESETS[name]()
  # The train step's knobs, present so that --config.model... overrides can set them.
  model["vision"].setdefault("images_per_row", 0.0)
  model["llm"].setdefault("loss_chunk", 0)
  return ml_collections.ConfigDict(model)
