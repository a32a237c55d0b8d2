"""Study variant: MMA whose images also see later turns' questions (mask 'mma_conversation').

Not decodable turn by turn with a KV cache (the image's keys exist before a later question
does), so its scores are an upper bound on grouping a conversation's turns, not a model to
deploy; in one-turn examples it equals sft_mma.py.
"""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.mask = "mma_conversation"
  c.data.order = "I&T"
  return c
