"""SFT with MMA through LoRA adapters: rank-16 adapters on the LLM's projections train, the
base (from config.init_from: a PT run or a converted HF model) stays frozen in bfloat16, and
checkpoints hold the adapters alone. Export merges them:
  python -m mma_jax.convert export --from CONVERTED --lora_run WORKDIR --hf_out OUT
"""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.mask = "mma"
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.optim.frozen_dtype = "bfloat16"
  c.optim.lr = 1e-3            # adapters take a larger step than full fine-tuning
  return c
