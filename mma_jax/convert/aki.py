"""AKI checkpoints (Sony/AKI-4B-phi-3.5-mini layout) <-> an mma_jax VLM.

  vision_encoder.*   SigLIP vision transformer            -> vision/
  vision_tokenizer.* Perceiver resampler (144 latents)    -> connector/
  lang_model.*       Phi-3.5 with decoupled embeddings    -> llm/

AKI adds <image> and <|endofchunk|> as two extra rows (additional_embedding / additional_fc)
next to the original Phi-3 matrices and reads only the first `initial_tokenizer_len` rows of
those; its output layer carries a bias. mma_jax holds one vocabulary of initial_tokenizer_len
+ 2 rows, so token id t means the same in both, and the logits are the same concatenation.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mma_jax.convert import llm as llm_conv
from mma_jax.convert import siglip
from mma_jax.convert.rules import Rule, fused_linear, linear, linear_in, prefixed, rule, same
from mma_jax.models.configs import ConnectorConfig, LLMConfig

V, T, L = "vision_encoder.", "vision_tokenizer.", "lang_model."


def perceiver_config(tensors, heads: int = 8) -> ConnectorConfig:
  """The resampler's shape, read off its tensors (heads is not recoverable: AKI uses 8)."""
  num_latents, width = tensors[T + "latents"].shape
  depth = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith(T + "layers."))
  inner = tensors[T + "layers.0.0.to_q.weight"].shape[0]
  ff = tensors[T + "layers.0.1.1.weight"].shape[0]
  if inner % heads:
    raise ValueError(f"{T}layers.0.0.to_q.weight has {inner} rows, not a multiple of "
                     f"--perceiver_heads={heads}.")
  return ConnectorConfig(kind="perceiver", depth=depth, heads=heads, dim_head=inner // heads,
                         num_latents=num_latents, ff_mult=ff // width, ln_eps=1e-5)


def perceiver_rules(cfg: ConnectorConfig, width: int, out_dim: int) -> list[Rule]:
  h, dh, n = cfg.heads, cfg.dim_head, cfg.depth
  a, f = "layers.{i}.0.", "layers.{i}.1."
  table = [rule("latents", "latents", same()),
           rule(a + "to_q.weight", "layers/q/kernel", linear(h, dh), n),
           rule(a + "to_kv.weight", ("layers/k/kernel", "layers/v/kernel"),
                fused_linear((h, dh), (h, dh)), n),
           rule(a + "to_out.weight", "layers/o/kernel", linear_in(h, dh), n),
           rule(f + "1.weight", "layers/ff1/kernel", linear(width * cfg.ff_mult), n),
           rule(f + "3.weight", "layers/ff2/kernel", linear(width), n),
           rule("projection.weight", "projection/kernel", linear(out_dim)),
           rule("projection.bias", "projection/bias", same())]
  for hf, ours, layers in ((a + "norm_media", "layers/norm_media", n),
                           (a + "norm_latents", "layers/norm_latents", n),
                           (f + "0", "layers/ff_norm", n), ("norm", "norm", 0)):
    table += [rule(hf + ".weight", ours + "/scale", same(), layers),
              rule(hf + ".bias", ours + "/bias", same(), layers)]
  return prefixed(table, T, "connector")


def _decoupled(n0: int, rows: int):
  """[rows, E] original + [2, E] additional <-> our [n0 + 2, E] (rows past n0 were unused)."""
  def to_flax(w, extra):
    return (np.concatenate([w[:n0], extra]),)

  def to_hf(x):
    pad = jnp.zeros((rows - n0,) + x.shape[1:], x.dtype)
    return jnp.concatenate([x[:n0], pad]), x[n0:]
  return to_flax, to_hf


def _transposed(pair):
  to_flax, to_hf = pair
  return (lambda *a: tuple(x.T for x in to_flax(*a))), (lambda k: to_hf(k.T))


def llm_rules(cfg: LLMConfig, n0: int, rows: int, has_bias: bool) -> list[Rule]:
  """Phi-3 body + AKI's decoupled embedding and output layer (+ output bias)."""
  table = llm_conv.rules(cfg, "phi3", hf_prefix=L, param_prefix="llm", embeddings=False)
  emb = "model.embed_tokens."
  out = [rule((emb + "weight", emb + "additional_embedding.weight"), "embedder/embedding",
              _decoupled(n0, rows)),
         rule(("lm_head.weight", "lm_head.additional_fc.weight"), "lm_head/kernel",
              _transposed(_decoupled(n0, rows)))]
  if has_bias:
    out.append(rule(("lm_head.bias", "lm_head.additional_fc.bias"), "lm_head/bias",
                    _decoupled(n0, rows)))
  return table + prefixed(out, L, "llm")


def configs(aki_config: dict, tensors, vision_hf_config: dict, llm_hf_config: dict,
            perceiver_heads: int = 8):
  """(VLMConfig dict, rules, ignored tensor names) for an AKI checkpoint.

  vision_hf_config / llm_hf_config: the config.json of the SigLIP / Phi-3.5 models AKI was built
  from (AKI's own config.json only names them).
  """
  vis = siglip.config_from_hf(vision_hf_config)
  llm = llm_conv.config_from_hf(llm_hf_config)
  if llm_conv.family_of(llm_hf_config) != "phi3":
    raise ValueError("AKI's language model is Phi-3.x; the --llm_config given is "
                     f"{llm_hf_config.get('model_type')!r}.")
  rows = tensors[L + "model.embed_tokens.weight"].shape[0]
  if "initial_tokenizer_len" not in aki_config:
    raise ValueError("The AKI config.json has no 'initial_tokenizer_len': it says where the "
                     "embedding rows end and <image> / <|endofchunk|> (the additional rows) "
                     "begin. Add it from the checkpoint's model card (the tokenizer's length "
                     "before those two tokens were added).")
  n0 = int(aki_config["initial_tokenizer_len"])
  extra = tensors[L + "model.embed_tokens.additional_embedding.weight"].shape[0]
  has_bias = L + "lm_head.bias" in tensors
  llm = dataclasses.replace(llm, vocab_size=n0 + extra, lm_head_bias=has_bias,
                            tie_embeddings=False)
  conn = perceiver_config(tensors, perceiver_heads)
  table = (siglip.rules(vis, hf_prefix=V) + perceiver_rules(conn, vis.hidden, llm.hidden)
           + llm_rules(llm, n0, rows, has_bias))
  ignored = [k for k in tensors if k.startswith(V) and siglip.IGNORED.fullmatch(k[len(V):])]
  model = {"vision": dataclasses.asdict(vis), "connector": dataclasses.asdict(conn),
           "llm": dataclasses.asdict(llm)}
  return model, table, ignored
