"""LLaVA-format JSON (llava_instruct_150k.json, LLaVA-665k mixes, ShareGPT4V, ...) -> records.

Rows: {id, image: path | [paths] (absent for text-only), conversations: [{from, value}]}.
Conversations are kept whole (multi-turn, unlike AKI's one-pair-per-sample split) and several
images are allowed. A row with images but no <image> tag gets one tag per image at the start of
its first human turn (LLaVA's convention); any other tag count that does not match is a
malformed row. --images: the root the image paths are relative to (COCO train2017 for
llava_instruct_150k).
"""
from __future__ import annotations

from mma_jax.data.chat import IMAGE_TAG
from mma_jax.data.importers.common import examples

# Speaker names used across LLaVA-style files, mapped to the schema's two.
SPEAKERS = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def llava(inputs, images, split, source):
  """--input FILE.json | FILE.jsonl, one or more."""
  del images, split

  def make(n, row):
    image = row.get("image", [])
    paths = [image] if isinstance(image, str) else list(image)
    conv = [{"from": SPEAKERS.get(m["from"], m["from"]), "value": m["value"]}
            for m in row["conversations"]]
    if paths and conv and not any(IMAGE_TAG in m["value"] for m in conv):
      conv[0] = dict(conv[0], value=f"{IMAGE_TAG}\n" * len(paths) + conv[0]["value"])
    return [{"id": f"{source}-{row.get('id', n)}", "image": paths, "conversations": conv,
             "source": source, "task_type": "conversation"}]
  for path in inputs:
    yield from examples(path, make)
