"""Hand-drawn token layouts for mask and model tests.

A layout is three strings of equal length, one character per token:
  kind: P prompt text, I image, A response (answer) text, . padding
  seg:  segment id digit (0 = padding); turn: turn digit.
"""
import numpy as np

_MODALITY = {"P": 0, "I": 1, "A": 0, ".": 0}
_ROLE = {"P": 1, "I": 1, "A": 2, ".": 0}


def vectors(kind: str, seg: str | None = None, turn: str | None = None):
  """-> dict of segment_ids, modality, role, turn, positions, each i32[1, L]."""
  seg = seg or "".join("0" if c == "." else "1" for c in kind)
  turn = turn or "0" * len(kind)
  assert len(kind) == len(seg) == len(turn)
  segment = np.array([int(c) for c in seg], np.int32)
  positions = np.zeros_like(segment)
  for s in set(segment.tolist()) - {0}:
    positions[segment == s] = np.arange(np.sum(segment == s))
  out = {
      "segment_ids": segment,
      "modality": np.array([_MODALITY[c] for c in kind], np.int32),
      "role": np.array([_ROLE[c] for c in kind], np.int32),
      "turn": np.array([int(c) for c in turn], np.int32),
      "positions": positions,
  }
  return {k: v[None] for k, v in out.items()}


def matrix(rows: str) -> np.ndarray:
  """'11. 111' style rows (whitespace-separated) -> bool[L, L]."""
  return np.array([[c == "1" for c in row] for row in rows.split()], bool)


def tiny_vlm_config(connector: str = "mlp", **llm_overrides):
  """A VLM small enough to compile in seconds: 16 px images of 4 patches -> 4 tokens (mlp)."""
  from mma_jax.models import configs
  llm = dict(vocab_size=64, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, mlp_dim=128)
  llm.update(llm_overrides)
  return configs.VLMConfig(
      vision=configs.ViTConfig(image_size=16, patch_size=8, hidden=32, layers=1, heads=2,
                               mlp_dim=64),
      connector=configs.ConnectorConfig(kind=connector, depth=2, heads=2, dim_head=16,
                                        num_latents=3),
      llm=configs.LLMConfig(**llm))


def model_batch(kind: str, seg=None, turn=None, num_images=None, seed=0, image_size=16,
                tokens_per_image=4):
  """A model batch (B=1) for a layout whose 'I' runs are tokens_per_image long per image."""
  v = vectors(kind, seg, turn)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(5, 64, size=v["role"].shape).astype(np.int32)
  tokens[v["modality"] == 1] = 4
  n = num_images or max(1, int(np.sum(v["modality"] == 1)) // tokens_per_image)
  images = rng.uniform(-1, 1, size=(1, n, image_size, image_size, 3)).astype(np.float32)
  return dict(v, tokens=tokens, images=images)
