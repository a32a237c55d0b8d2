"""Frozen model configs. ml_collections configs are converted to these at the model boundary."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mma_jax.kernels import IMPLEMENTATIONS

# Rematerialisation policies of a scanned layer stack (mma_jax.models.layers maps them).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Auto loss chunking: a row whose f32 logits pass AUTO_LOSS_WHOLE_MAX elements (2^30: 4 GiB)
# is split into chunks of at most AUTO_LOSS_ELEMENTS (2^28: 1 GiB). Chunks cost time: on one
# H200 (2026-12-04) the llama3.2-1b step (2 x 4096 tokens, vocab 128,256) took 251 ms whole,
# 259-263 ms in chunks of 2048 tokens, 295 ms in chunks of 128.
AUTO_LOSS_WHOLE_MAX = 2 ** 30
AUTO_LOSS_ELEMENTS = 2 ** 28


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding. kind: 'default' | 'llama3' | 'longrope' (the HF rope_type names).

  llama3: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings.
  longrope: short_factor / long_factor (one per frequency), original_max_position_embeddings,
    attention_factor (None: sqrt(1 + ln(s) / ln(original)) with s = max_position_embeddings /
    original_max_position_embeddings, as HF computes it for Phi-3).
  """
  kind: str = "default"
  theta: float = 10000.0
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192
  max_position_embeddings: int = 8192
  short_factor: tuple[float, ...] = ()
  long_factor: tuple[float, ...] = ()
  attention_factor: float | None = None


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Low-rank adapters: a targeted kernel W acts as W + (alpha / rank) * A @ B, A [in, rank]
  (random), B [rank, out] (zeros: the adapted model starts as the base exactly). Targets are
  regexes, full-matched against the end of a Dense module's path ('layers/q'); rank 0 = none.
  Set from the run config's `lora` section (mma_jax.models.build), not stored with a model."""
  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = ()

  @property
  def scale(self) -> float:
    return self.alpha / self.rank if self.rank else 0.0


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """Llama 3.x / Qwen2.x / Phi-3.x decoder, one code path chosen by fields."""
  vocab_size: int = 256
  hidden: int = 128
  layers: int = 2
  heads: int = 4
  kv_heads: int = 2
  head_dim: int = 32
  mlp_dim: int = 256
  rms_eps: float = 1e-5
  rope: RopeConfig = RopeConfig()
  qkv_bias: bool = False           # Qwen2
  tie_embeddings: bool = False     # Qwen2.5 small, Llama 3.2 1B/3B
  lm_head_bias: bool = False       # AKI's decoupled output head carries one
  dtype: str = "float32"           # compute dtype; parameters stay float32
  remat: str = "none"              # one of REMAT_POLICIES
  unroll: int = 1                  # layers per scan iteration; 0 = all (layers.scanned)
  attention: str = "auto"          # one of mma_jax.kernels.IMPLEMENTATIONS
  # Tokens per chunk of the training loss (f32 logits of one chunk at a time, recomputed in the
  # backward pass): 0 = auto (chunked once a row's logits pass AUTO_LOSS_WHOLE_MAX), -1 = whole.
  loss_chunk: int = 0
  lora: LoRAConfig = LoRAConfig()

  def loss_chunk_for(self, length: int) -> int:
    """Tokens per loss chunk for rows of `length` tokens; 0 = the whole row at once."""
    chunk = self.loss_chunk
    if chunk == 0:  # auto: whole while it fits, else the largest power of two under the budget
      if length * self.vocab_size <= AUTO_LOSS_WHOLE_MAX:
        return 0
      chunk = max(128, 2 ** max(0, (AUTO_LOSS_ELEMENTS // self.vocab_size).bit_length() - 1))
    return chunk if 0 < chunk < length else 0


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """SigLIP vision tower."""
  image_size: int = 32
  patch_size: int = 8
  hidden: int = 64
  layers: int = 2
  heads: int = 4
  mlp_dim: int = 128
  ln_eps: float = 1e-6
  dtype: str = "float32"
  remat: str = "none"
  unroll: int = 1                  # layers per scan iteration; 0 = all (layers.scanned)
  # Images the tower encodes per pass, per row of a micro-batch on average: a static
  # ceil(images_per_row x rows) per batch shard; a batch with more real images takes further
  # passes, empty slots none. 0 = every slot in one pass, empty ones too.
  images_per_row: float = 0.0
  lora: LoRAConfig = LoRAConfig()

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
  """kind 'mlp' (LLaVA-1.5: Dense-GELU-Dense, one token per patch) or 'perceiver' (AKI)."""
  kind: str = "mlp"
  depth: int = 6
  heads: int = 8
  dim_head: int = 64
  num_latents: int = 144
  ff_mult: int = 4
  ln_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class VLMConfig:
  vision: ViTConfig = ViTConfig()
  connector: ConnectorConfig = ConnectorConfig()
  llm: LLMConfig = LLMConfig()

  @property
  def tokens_per_image(self) -> int:
    if self.connector.kind == "perceiver":
      return self.connector.num_latents
    return self.vision.num_patches


def build(cls, values: Mapping[str, Any], where: str):
  """Dataclass from a mapping; unknown keys are an error that names them."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"Unknown key(s) {unknown} in config.{where}; valid keys: {sorted(fields)}.")
  kwargs = {}
  for name, value in values.items():
    if name == "rope":
      value = build(RopeConfig, value, f"{where}.rope")
    elif name == "lora":
      value = build(LoRAConfig, value, f"{where}.lora")
    elif isinstance(value, list):
      value = tuple(value)
    kwargs[name] = value
  return cls(**kwargs)


def vlm_config_from_dict(model: Mapping[str, Any]) -> VLMConfig:
  """VLMConfig from a nested mapping {vision: {...}, connector: {...}, llm: {...}}."""
  model = dict(model)
  unknown = sorted(set(model) - {"vision", "connector", "llm"})
  if unknown:
    raise ValueError(f"Unknown key(s) {unknown} in config.model; valid: vision, connector, llm.")
  cfg = VLMConfig(vision=build(ViTConfig, model.get("vision", {}), "model.vision"),
                  connector=build(ConnectorConfig, model.get("connector", {}), "model.connector"),
                  llm=build(LLMConfig, model.get("llm", {}), "model.llm"))
  validate(cfg)
  return cfg


def validate(cfg: VLMConfig) -> None:
  """Impossible values get an error naming the config key."""
  v, c, m = cfg.vision, cfg.connector, cfg.llm
  checks = [
      # A VALID patch conv floors (SigLIP so400m: 384 / 14 -> 27 x 27 patches).
      (v.image_size >= v.patch_size, "model.vision.image_size must be at least patch_size"),
      (v.hidden % v.heads == 0, "model.vision.hidden must be a multiple of model.vision.heads"),
      (m.heads % m.kv_heads == 0, "model.llm.heads must be a multiple of model.llm.kv_heads"),
      (m.head_dim % 2 == 0, "model.llm.head_dim must be even (RoPE rotates pairs)"),
      (c.kind in ("mlp", "perceiver"), f"model.connector.kind={c.kind!r}: use 'mlp' or 'perceiver'"),
      (m.rope.kind in ("default", "llama3", "longrope"),
       f"model.llm.rope.kind={m.rope.kind!r}: use 'default', 'llama3' or 'longrope'"),
      (m.dtype in ("float32", "bfloat16"), f"model.llm.dtype={m.dtype!r}: use float32 or bfloat16"),
      (m.attention in IMPLEMENTATIONS,
       f"model.llm.attention={m.attention!r}: use one of {IMPLEMENTATIONS}"),
      (m.remat in REMAT_POLICIES, f"model.llm.remat={m.remat!r}: use one of {REMAT_POLICIES}"),
      (v.remat in REMAT_POLICIES, f"model.vision.remat={v.remat!r}: use one of {REMAT_POLICIES}"),
      (v.images_per_row >= 0, "model.vision.images_per_row must be 0 (every slot) or positive"),
      (m.loss_chunk >= -1, "model.llm.loss_chunk must be -1 (whole), 0 (auto) or positive"),
      (m.unroll >= 0, "model.llm.unroll must be 0 (all layers) or positive"),
      (v.unroll >= 0, "model.vision.unroll must be 0 (all layers) or positive"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  for name, value in [("model.llm.layers", m.layers), ("model.llm.hidden", m.hidden),
                      ("model.llm.vocab_size", m.vocab_size), ("model.vision.layers", v.layers)]:
    if value <= 0:
      raise ValueError(f"{name}={value} must be positive.")
