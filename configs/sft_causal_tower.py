"""SFT baseline (causal, image then question) with the vision tower trained too: a probe of
why SFT does not fit the hard benchmark (launch/fit_probes.sh, docs/study/fit/)."""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.mask = "causal"
  c.data.order = "I&T"
  c.optim.freeze = ()  # tuples cannot be set from the command line: a config of its own
  return c
