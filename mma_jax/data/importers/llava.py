"""LLaVA-format JSON (llava_instruct_150k.json, LLaVA-665k mixes, ShareGPT4V, ...) -> records.

Rows: {id, image: path | [paths] (absent for text-only), conversations: [{from, value}]}.
--images: the root the image paths are relative to (COCO train2017 for llava_instruct_150k).

Two importers read this format:
  llava      conversations kept whole (multi-turn) and several images allowed. A row with images
             but no <image> tag gets one tag per image at the start of its first human turn
             (LLaVA's convention); any other tag count that does not match is a malformed row.
  llava150k  the paper's recipe (AKI's LLaVAInstructDataset): each human/gpt pair becomes its
             own single-turn record, id '{source}-{row id}-{k}' for pair k = 0, 1, ...; the
             row's tags are removed and one <image> tag per image leads every human turn, so
             each record sees the image. To keep LLaVA-150k conversations whole instead, import
             it with `llava --name llava150k`.
"""
from __future__ import annotations

import re

from mma_jax.data.chat import IMAGE_TAG
from mma_jax.data.importers.common import examples

# Speaker names used across LLaVA-style files, mapped to the schema's two.
SPEAKERS = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
# A tag with the newline LLaVA writes beside it ('<image>\n' or '\n<image>'), as AKI strips it.
_TAG = re.compile(r"\n?" + re.escape(IMAGE_TAG) + r"\n?")


def _parts(row, n, source):
  """(record id, image paths, conversation with the schema's speaker names) of a row."""
  image = row.get("image", [])
  paths = [image] if isinstance(image, str) else list(image)
  conv = [{"from": SPEAKERS.get(m["from"], m["from"]), "value": m["value"]}
          for m in row["conversations"]]
  return f"{source}-{row.get('id', n)}", paths, conv


def llava(inputs, images, split, source):
  """--input FILE.json | FILE.jsonl, one or more: conversations kept whole."""
  del images, split

  def make(n, row):
    rid, paths, conv = _parts(row, n, source)
    if paths and conv and not any(IMAGE_TAG in m["value"] for m in conv):
      conv[0] = dict(conv[0], value=f"{IMAGE_TAG}\n" * len(paths) + conv[0]["value"])
    return [{"id": rid, "image": paths, "conversations": conv, "source": source,
             "task_type": "conversation"}]
  for path in inputs:
    yield from examples(path, make)


def llava150k(inputs, images, split, source):
  """--input llava_instruct_150k.json, one or more: one single-turn record per human/gpt pair
  (the paper's recipe, see the module docstring). A conversation that is not human, gpt,
  human, gpt, ... is a malformed row."""
  del images, split

  def make(n, row):
    rid, paths, conv = _parts(row, n, source)
    speakers = [m["from"] for m in conv]
    if not conv or speakers != ["human", "gpt"] * (len(conv) // 2):
      raise ValueError(f"conversation speakers {speakers} are not human/gpt pairs")
    tags = f"{IMAGE_TAG}\n" * len(paths)
    out = []
    for k in range(0, len(conv), 2):
      question = _TAG.sub("\n", conv[k]["value"]).strip()
      out.append({"id": f"{rid}-{k // 2}", "image": paths, "source": source,
                  "task_type": "conversation",
                  "conversations": [{"from": "human", "value": tags + question},
                                    {"from": "gpt", "value": conv[k + 1]["value"]}]})
    return out
  for path in inputs:
    yield from examples(path, make)
