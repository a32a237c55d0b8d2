"""python -m mma_jax.convert: HF safetensors <-> mma_jax checkpoints, and a logit-parity check.

  python -m mma_jax.convert [import] --llm DIR [--vision DIR [--connector perceiver|mlp]] --out OUT
  python -m mma_jax.convert [import] --vision DIR --out OUT
  python -m mma_jax.convert [import] --aki DIR --vision_config F --llm_config F --out OUT
  python -m mma_jax.convert export --from OUT --hf_out DIR [--part llm|vision] [--family F]
      [--lora_run WORKDIR]   # a LoRA run from OUT: its adapters merged into the kernels
  python -m mma_jax.convert check --hf DIR [--tolerance 1e-4]

A missing or malformed input, or a bad option, is one line and exit status 2 (mma_jax.cli).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from mma_jax import cli

SUBCOMMANDS = ("import", "export", "check")


def _parser() -> argparse.ArgumentParser:
  ap = cli.ArgumentParser(prog="python -m mma_jax.convert", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="HF directories -> an mma_jax checkpoint directory")
  imp.add_argument("--llm", help="Llama 3.x / Qwen2.x / Phi-3.x directory")
  imp.add_argument("--vision", help="SigLIP (vision) model directory")
  imp.add_argument("--aki", help="an AKI checkpoint directory (Sony/AKI-4B-phi-3.5-mini layout)")
  imp.add_argument("--vision_config", help="AKI: config.json of its SigLIP tower")
  imp.add_argument("--llm_config", help="AKI: config.json of its Phi-3.5 model")
  imp.add_argument("--perceiver_heads", type=int, default=8, help="AKI resampler heads")
  imp.add_argument("--connector", default="perceiver", choices=("perceiver", "mlp"),
                   help="the fresh connector when combining --vision and --llm")
  imp.add_argument("--num_latents", type=int, default=144, help="perceiver latents")
  imp.add_argument("--seed", type=int, default=0, help="init seed of the fresh connector")
  imp.add_argument("--out", required=True, help="output directory (must not hold params/)")
  exp = sub.add_parser("export", help="an mma_jax checkpoint directory -> HF safetensors")
  exp.add_argument("--from", dest="source", required=True,
                   help="a directory written by import, or a training workdir with model.json")
  exp.add_argument("--hf_out", required=True, help="output HF directory")
  exp.add_argument("--part", default="llm", choices=("llm", "vision"))
  exp.add_argument("--family", default="", help="llama | qwen2 | phi3 (default: the source's)")
  exp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  exp.add_argument("--lora_run", default="",
                   help="a LoRA training workdir started from --from: its adapters (latest "
                        "checkpoint) are merged into the kernels before export")
  chk = sub.add_parser("check", help="convert an HF directory and compare logits with "
                                     "transformers")
  chk.add_argument("--hf", required=True, help="HF model directory (LLM or SigLIP vision)")
  chk.add_argument("--tolerance", type=float, default=1e-4)
  chk.add_argument("--seq_len", type=int, default=32)
  chk.add_argument("--batch", type=int, default=2)
  return ap


def run_import(a) -> str:
  from mma_jax.convert import hf
  if os.path.exists(os.path.join(a.out, "params")):  # before anything is written there
    raise FileExistsError(f"{a.out}/params exists; choose a new --out directory.")
  if a.aki:
    if not (a.vision_config and a.llm_config):
      raise ValueError("--aki needs --vision_config and --llm_config (the config.json files of "
                       "the SigLIP and Phi-3.5 models AKI wraps; its own config only names them).")
    conv = hf.import_aki(a.aki, a.vision_config, a.llm_config, a.perceiver_heads)
    tok_from = a.aki
  elif a.llm and a.vision:
    connector = {"kind": a.connector}
    if a.connector == "perceiver":
      connector["num_latents"] = a.num_latents
    conv = hf.combine(hf.import_vision(a.vision), hf.import_llm(a.llm), connector, a.seed)
    tok_from = a.llm
    added = hf.add_image_tokens(conv, a.llm, a.out)
    if added:
      print(f"Added {added} to the tokenizer and the embeddings.")
  elif a.llm or a.vision:
    conv = hf.import_llm(a.llm) if a.llm else hf.import_vision(a.vision)
    tok_from = a.llm
  else:
    raise ValueError("Give --llm, --vision, both, or --aki.")
  hf.save(conv, a.out, tokenizer_from=tok_from)
  n = sum(int(np.prod(v.shape)) for v in conv.params.values())
  print(f"Wrote {a.out}: components {conv.components}, {n:,} parameters, "
        f"template {conv.template or '-'}.")
  return a.out


def run_export(a) -> None:
  from mma_jax.convert import hf
  import ml_dtypes
  meta, params = hf.load(a.source)
  if a.lora_run:
    params = _merged_lora(a.source, a.lora_run, params)
  dtype = np.float32 if a.dtype == "float32" else ml_dtypes.bfloat16
  if a.part == "vision":
    hf.export_vision(meta["model"], params, a.hf_out, dtype)
  else:
    family = a.family or meta.get("family") or (
        "qwen2" if meta["model"]["llm"].get("qkv_bias") else "llama")
    hf.export_llm(meta["model"], params, family, a.hf_out, dtype, meta.get("special_ids"))
    for name in hf.TOKENIZER_FILES:
      src = os.path.join(a.source, name)
      if os.path.exists(src):
        with open(src, "rb") as f, open(os.path.join(a.hf_out, name), "wb") as g:
          g.write(f.read())
  print(f"Wrote {a.hf_out} ({a.part}).")


def _merged_lora(source: str, run: str, params: dict) -> dict:
  """The base parameters of `source` with the adapters of LoRA run `run` merged in."""
  from mma_jax import checkpoint
  from mma_jax.models import lora
  path = os.path.join(run, "lora.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: --lora_run takes the workdir of a run trained "
                            "with config.lora.rank > 0.")
  with open(path) as f:
    info = json.load(f)
  if os.path.abspath(info.get("init_from") or "") != os.path.abspath(source):
    print(f"Note: the run started from {info.get('init_from')!r}, not {source!r}; its "
          "adapters are merged into --from's weights.")
  adapters, step = checkpoint.load_saved_params(run)
  merged = lora.merge_tree(lora.combine(params, adapters), info["alpha"] / info["rank"])
  print(f"Merged the LoRA adapters of {run} (step {step}, rank {info['rank']}).")
  return merged


def run_check(a) -> int:
  from mma_jax.convert import parity
  result = parity.check(a.hf, seq_len=a.seq_len, batch=a.batch)
  # For a vision tower the compared output is the last hidden state (the VLM's features).
  print(f"max_abs_logit_diff: {result['max_abs_diff']:.3e}")
  print(json.dumps(result))
  if not result["max_abs_diff"] <= a.tolerance:
    print(f"FAIL: above tolerance {a.tolerance}", file=sys.stderr)
    return 1
  print(f"OK: within tolerance {a.tolerance}")
  return 0


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
    argv = ["import"] + argv  # import is the default command
  a = _parser().parse_args(argv)
  if a.command == "import":
    run_import(a)
  elif a.command == "export":
    run_export(a)
  else:
    return run_check(a)
  return 0


if __name__ == "__main__":
  cli.run(main)
