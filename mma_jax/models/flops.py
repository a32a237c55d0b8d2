"""Model FLOPs of a training step, from the model config (for MFU and the estimate script).

Counted: every matmul, 2 FLOPs per multiply-add (projections, MLPs, patch embedding, heads)
and attention's two matmuls (scores and values) over the full row, as the PaLM paper's MFU
does (no halving for the causal mask; packed rows count as one sequence). Not counted:
elementwise ops, softmax, norms, and recomputation under remat (or of the chunked loss's
logits): MFU, not hardware FLOPs.

Images: the vision tower and the connector count the images they encode: every slot, or with
model.vision.images_per_row one pass of that many per row (VLM.embed_images skips empty
slots); `real_images` (filled slots per row, e.g. the step's "images" metric / rows) gives the
useful count instead.

Backward: a component whose parameters train costs 2x its forward (weight and input gradients);
a frozen one that a gradient must still cross (the LLM when only the connector trains) costs its
input gradients; a frozen one at the input (the vision tower by default) costs nothing.
"""
from __future__ import annotations

import dataclasses

from mma_jax.models.configs import LLMConfig, ViTConfig, VLMConfig

COMPONENTS = ("vision", "connector", "llm")  # in data-flow order

# Dense bf16 peak per JAX device, by device_kind substring (first match wins). TPU v2/v3 JAX
# devices are single cores (half a chip).
PEAK_FLOPS = (
    ("TPU v2", 22.5e12), ("TPU v3", 61.5e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12), ("TPU v6e", 918e12),
    ("TPU7x", 2307e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L4", 121e12),
)


@dataclasses.dataclass(frozen=True)
class Flops:
  """Forward FLOPs of one unit (an image, a row) split into weight matmuls and attention."""
  weights: float = 0.0
  attention: float = 0.0

  @property
  def total(self) -> float:
    return self.weights + self.attention

  def __add__(self, other: "Flops") -> "Flops":
    return Flops(self.weights + other.weights, self.attention + other.attention)

  def __mul__(self, k: float) -> "Flops":
    return Flops(self.weights * k, self.attention * k)


def _attention(q_len: int, k_len: int, heads: int, head_dim: int) -> float:
  return 2 * 2 * q_len * k_len * heads * head_dim  # scores q.k and the weighted sum of v


def vision(cfg: ViTConfig) -> Flops:
  """One image through the ViT (patch embedding + layers)."""
  p, w = cfg.num_patches, cfg.hidden
  patch = 2 * p * cfg.patch_size ** 2 * 3 * w
  layer = 2 * p * (4 * w * w + 2 * w * cfg.mlp_dim)  # q, k, v, o and the two MLP matrices
  return Flops(patch + cfg.layers * layer, cfg.layers * _attention(p, p, cfg.heads,
                                                                    cfg.hidden // cfg.heads))


def connector(cfg: VLMConfig) -> Flops:
  """One image's features -> LLM tokens (MLP per patch, or the Perceiver resampler)."""
  c, p, w, e = cfg.connector, cfg.vision.num_patches, cfg.vision.hidden, cfg.llm.hidden
  if c.kind == "mlp":
    return Flops(2 * p * (w * e + e * e))
  n, inner = c.num_latents, c.heads * c.dim_head
  block = 2 * (n * w * inner + 2 * (p + n) * w * inner + n * inner * w + 2 * n * w * w * c.ff_mult)
  return Flops(c.depth * block + 2 * n * w * e,
               c.depth * _attention(n, p + n, c.heads, c.dim_head))


def llm(cfg: LLMConfig, length: int, pairs: float | None = None) -> Flops:
  """One row of `length` tokens through the decoder and the output head; attention over
  `pairs` query-key pairs (None: the whole row, length ** 2, the MFU convention)."""
  e, d = cfg.hidden, cfg.head_dim
  layer = 2 * length * (e * cfg.heads * d + 2 * e * cfg.kv_heads * d + cfg.heads * d * e
                        + 3 * e * cfg.mlp_dim)
  head = 2 * length * e * cfg.vocab_size
  return Flops(cfg.layers * layer + head,
               cfg.layers * _attention(1, length * length if pairs is None else pairs,
                                       cfg.heads, d))


def encoded_images(cfg: ViTConfig, images: int, real_images: float | None = None) -> float:
  """Images per row the tower encodes: `real_images` when given (the useful count), else one
  pass of images_per_row when set, else every one of the `images` slots."""
  if real_images is not None:
    return min(real_images, images)
  return min(cfg.images_per_row, images) if cfg.images_per_row else images


def forward(cfg: VLMConfig, batch: int, length: int, images: int,
            real_images: float | None = None, pairs: float | None = None) -> dict[str, Flops]:
  """Forward FLOPs per component for `batch` rows of `length` tokens with `images` slots each,
  of which encoded_images(...) per row go through the tower; the LLM's attention over `pairs`
  allowed query-key pairs per row (None: whole rows)."""
  encoded = batch * encoded_images(cfg.vision, images, real_images)
  return {"vision": vision(cfg.vision) * encoded,
          "connector": connector(cfg) * encoded,
          "llm": llm(cfg.llm, length, pairs) * batch}


def train_step(cfg: VLMConfig, batch: int, length: int, images: int,
               trainable: dict[str, bool], real_images: float | None = None,
               pairs: float | None = None) -> float:
  """Model FLOPs of one optimizer step over the global batch (all micro-batches).

  trainable: component name -> whether any of its parameters train; real_images: filled image
  slots per row on average, and pairs: the query-key pairs the mask allows per row on
  average, for the useful count (None: what the step encodes; attention over whole rows).
  """
  total, upstream = 0.0, False
  for name, f in forward(cfg, batch, length, images, real_images, pairs).items():
    grads_flow = trainable[name] or upstream  # a gradient passes through this component
    backward = f.weights * (trainable[name] + grads_flow) + 2 * f.attention * grads_flow
    total += f.total + backward
    upstream = grads_flow
  return total


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one device of this kind; None when unknown."""
  for key, value in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return value
  return None
