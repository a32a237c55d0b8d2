"""Conversion parity per family: tiny random transformers models vs their mma_jax conversion.

  python benchmarks/parity.py [--seq_len 24]

Builds each family of tests/convert/hf_models.py (Llama untied, Llama 3 scaled + tied, Qwen2
tied / untied, Phi-3 LongRoPE, SigLIP), saves it as safetensors, and runs the same check as
`python -m mma_jax.convert check --hf DIR`: one line per family with the max |logit difference|
(SigLIP: last hidden state) and, for scale, the largest |logit| of the transformers model. f32.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mma_jax.convert import parity  # pylint: disable=wrong-import-position
from tests.convert import hf_models  # pylint: disable=wrong-import-position


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--seq_len", type=int, default=24, help="tokens per row (LongRoPE: > 16 "
                 "exercises the long factors of the tiny Phi-3)")
  args = p.parse_args()
  import transformers  # pylint: disable=g-import-not-at-top
  transformers.utils.logging.disable_progress_bar()
  print(f"{'family':<22} {'max_abs_logit_diff':>18} {'max_abs_logit':>14}")
  with tempfile.TemporaryDirectory() as root:
    builds = [(n, lambda d, n=n: hf_models.save_llm(n, d)) for n in sorted(hf_models.LLMS)]
    builds.append(("siglip_vision", lambda d: hf_models.save_siglip(d, use_head=False)))
    for name, build in builds:
      directory = os.path.join(root, name)
      build(directory)
      r = parity.check(directory, seq_len=args.seq_len)
      print(f"{name:<22} {r['max_abs_diff']:>18.3e} {r['ref_max_abs']:>14.3f}")


if __name__ == "__main__":
  main()
