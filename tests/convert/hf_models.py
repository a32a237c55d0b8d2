"""Tiny random transformers models of each family, saved as safetensors by the tests."""
from __future__ import annotations

import pytest
torch = pytest.importorskip(  # absent on the Python 3.12 CI leg
    "torch", reason="PyTorch parity: torch is installed on the Python 3.11 CI leg only")
import transformers

LLM_COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, initializer_range=0.2)  # logits of a few units

# name -> (config class, model class, config overrides). Covers the rope scalings and both
# tied and untied embeddings.
LLMS = {
    "llama_untied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                     dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama3_scaled_tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                           dict(num_key_value_heads=2, tie_word_embeddings=True,
                                max_position_embeddings=256,
                                rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                  low_freq_factor=1.0, high_freq_factor=4.0,
                                                  original_max_position_embeddings=16))),
    "qwen2_tied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                   dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2_untied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                     dict(num_key_value_heads=1, tie_word_embeddings=False)),
    # Phi-3.5 style: fused projections, LongRoPE (the parity runs past 16 positions, so the
    # long factors and the attention factor are both exercised).
    "phi3_longrope": (transformers.Phi3Config, transformers.Phi3ForCausalLM,
                      dict(num_key_value_heads=4, max_position_embeddings=64,
                           original_max_position_embeddings=16,
                           rope_scaling={"type": "longrope",
                                         "short_factor": [1.0, 1.1, 1.3, 1.6],
                                         "long_factor": [1.5, 2.0, 4.0, 8.0]})),
}


def save_llm(name: str, directory, seed: int = 0, vocab_size: int = 96, **save_kwargs):
  """Build LLMS[name] with random weights, save to directory; returns the torch model."""
  config_cls, model_cls, overrides = LLMS[name]
  torch.manual_seed(seed)
  model = model_cls(config_cls(**{**LLM_COMMON, **overrides, "vocab_size": vocab_size})).eval()
  with torch.no_grad():  # make norms non-trivial so a transposed mapping cannot hide
    for n, p in model.named_parameters():
      if "norm" in n or n.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(directory), safe_serialization=True, **save_kwargs)
  return model


VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=30, patch_size=7)  # 30 / 7 floors to 4 x 4 patches, as 384 / 14 does


def save_siglip(directory, seed: int = 0, use_head: bool = True):
  torch.manual_seed(seed)
  cfg = transformers.SiglipVisionConfig(**VISION, vision_use_head=use_head)
  model = transformers.SiglipVisionModel(cfg).eval()
  model.save_pretrained(str(directory), safe_serialization=True)
  return model


def save_siglip_full(directory, seed: int = 0):
  """A whole SiglipModel (text tower too), as google/siglip-* repositories ship."""
  torch.manual_seed(seed)
  cfg = transformers.SiglipConfig(
      vision_config=VISION,
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, vocab_size=50, max_position_embeddings=16))
  model = transformers.SiglipModel(cfg).eval()
  model.save_pretrained(str(directory), safe_serialization=True)
  return model


def converted_vlm(root, latents: int = 3):
  """SigLIP + Qwen2 (tied) with a tiny Qwen2.5-template tokenizer, converted into root/vlm."""
  from mma_jax.convert import __main__ as convert_cli
  from tests.data.test_templates import tiny_tokenizer
  tok = tiny_tokenizer("qwen2.5", add_image=False)
  save_siglip(root / "vit")
  save_llm("qwen2_tied", root / "llm", vocab_size=tok.get_vocab_size())
  tok.save(str(root / "llm" / "tokenizer.json"))
  convert_cli.main(["--vision", str(root / "vit"), "--llm", str(root / "llm"),
                    "--num_latents", str(latents), "--out", str(root / "vlm")])
  return root / "vlm"
