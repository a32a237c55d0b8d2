"""Answer questions about an image with a converted (or trained) checkpoint, batched.

  python -m mma_jax.infer --model DIR --image photo.jpg --question "What is this?" \
      --question "How many people are there?" [--mask mma] [--max_new_tokens 64] \
      [--grids 1x2,2x1,2x2]   # AnyRes: the image as a thumbnail + the best grid's tiles

DIR is a directory written by `python -m mma_jax.convert` (model.json, params/, tokenizer.json).
Every question is asked about the same image in one batch (one compiled decode). A missing
file or a bad flag is one line and exit status 2 (mma_jax.cli).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import app, flags

from mma_jax import cli
from mma_jax.convert import hf
from mma_jax.data import chat, images, vocab
from mma_jax.evaluate import decode, prompts
from mma_jax.models import configs, vlm


def load(directory: str):
  """(VLM module, params, Tokenizer, model.json) of a converted directory."""
  meta, params = hf.load(directory)
  missing = {"vision", "connector", "llm"} - set(meta["components"])
  if missing:
    raise ValueError(f"{directory} holds only {meta['components']}; inference needs a whole VLM "
                     f"(missing {sorted(missing)}): convert with --vision and --llm, or --aki.")
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: copy the model's tokenizer.json there.")
  tok = vocab.Tokenizer.load(path, meta.get("template") or "shapes")
  return vlm.VLM(configs.vlm_config_from_dict(meta["model"])), params, tok, meta


def answer(model, params, tok: vocab.Tokenizer, image: np.ndarray, questions: Sequence[str],
           kind: str = "mma", max_new_tokens: int = 64, order: str = "I&T") -> list[str]:
  """Greedy answers to each question about image uint8[H, W, 3] at the model's size, or its
  AnyRes tiles uint8[K, size, size, 3] (mma_jax.data.images.tiles)."""
  tpi, size = model.cfg.tokens_per_image, model.cfg.vision.image_size
  examples = []
  for i, q in enumerate(questions):
    record = {"id": f"question-{i}", "images": [image],
              "conversations": [{"from": "human", "value": f"{chat.IMAGE_TAG}\n{q}"},
                                {"from": "gpt", "value": ""}]}
    examples.append((chat.encode(record, tok, tpi, order=order, drop_last_answer=True,
                                 image_size=size), None, None))
  length = max(len(ex["tokens"]) for ex, _, _ in examples)
  prompt, _, _ = next(prompts.prompt_batches(
      examples, batch_size=len(examples), prompt_length=length,
      max_images=max(len(ex["images"]) for ex, _, _ in examples), image_size=size))
  tokens, lengths = decode.generate(model, {"params": params}, prompt, kind=kind,
                                    max_new_tokens=max_new_tokens, eos_id=tok.stop_ids,
                                    pad_id=tok.pad_id)
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  return [tok.decode(row[:n].tolist()).strip() for row, n in zip(tokens, lengths)]


FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "directory written by python -m mma_jax.convert")
flags.DEFINE_string("image", None, "image file")
flags.DEFINE_multi_string("question", None, "a question (repeat for several; one batch)")
flags.DEFINE_string("mask", "", "mask kind at prefill: causal | mma | prefix (default: mma for "
                    "AKI, causal otherwise)")
flags.DEFINE_integer("max_new_tokens", 64, "answer length limit")
flags.DEFINE_list("grids", [], "AnyRes: tile grids ROWSxCOLS to choose from, e.g. 1x2,2x1,2x2 "
                  "(default: one image at the tower's size)")


def parse_grids(grids: Sequence[str]) -> tuple[tuple[int, int], ...]:
  """--grids entries 'ROWSxCOLS' -> ((rows, cols), ...)."""
  out = []
  for g in grids:
    parts = g.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
      raise ValueError(f"--grids: {g!r} is not ROWSxCOLS with positive numbers, e.g. 2x2.")
    out.append((int(parts[0]), int(parts[1])))
  return tuple(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  grids = parse_grids(FLAGS.grids)
  model, params, tok, meta = load(FLAGS.model)
  kind = FLAGS.mask or ("mma" if meta.get("template") == "aki" else "causal")
  image = images.load(FLAGS.image, model.cfg.vision.image_size, grids)
  for q, a in zip(FLAGS.question, answer(model, params, tok, image, FLAGS.question, kind,
                                         FLAGS.max_new_tokens)):
    print(f"Q: {q}\nA: {a}\n")


if __name__ == "__main__":
  flags.mark_flags_as_required(["model", "image", "question"])
  cli.run_absl(main)
