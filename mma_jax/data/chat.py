"""Records -> token ids and the four per-token vectors, by turn spans.

The sequence is a concatenation of separately tokenized spans; each span carries its role,
turn and modality, so the loss mask comes from the spans and nothing is ever re-tokenized.
AKI / Phi-3.5-style template (word-level here):
  turn 0 prompt:  <s> <|system|> {system} <|end|> <|user|> {images + text} <|end|> <|assistant|>
  turn t prompt:  <|user|> {images + text} <|end|> <|assistant|>
  response:       {answer} <|end|>                       (role 2: the loss is on it)
  PT:             <s> {images} {caption} <|endofchunk|>   (caption + end are the response)
Order 'I&T' puts a turn's images before its text, 'T&I' after it.
"""
from __future__ import annotations

import numpy as np

from mma_jax.data import synthetic
from mma_jax.data.vocab import Tokenizer

PROMPT, RESPONSE = 1, 2
IMAGE_TAG = "<image>"


class BadRecord(ValueError):
  """A record that cannot be turned into tokens; the message names it and says what to do."""


def check_images(record) -> list[np.ndarray]:
  """The record's images as uint8[H, W, 3] arrays, or BadRecord."""
  images = record.get("images")
  if images is None:
    raise BadRecord(f"Record {record.get('id')!r} has no 'images' field; use [] for text-only.")
  out = []
  for n, img in enumerate(images):
    img = None if img is None else np.asarray(img)
    if img is None or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3 or img.size == 0:
      got = None if img is None else f"{img.dtype}{list(img.shape)}"
      raise BadRecord(f"Record {record.get('id')!r}: image {n} is missing or corrupt (got {got}); "
                      "expected uint8[H, W, 3]. Fix or drop the record, or set "
                      "config.data.skip_bad_records=True to skip such records with a count.")
    out.append(img)
  return out


def _turns(record):
  conv = record.get("conversations") or []
  if len(conv) < 2 or len(conv) % 2:
    raise BadRecord(f"Record {record.get('id')!r} needs human/gpt turn pairs; got {len(conv)} "
                    "messages.")
  for i, msg in enumerate(conv):
    expected = "human" if i % 2 == 0 else "gpt"
    if msg.get("from") != expected:
      raise BadRecord(f"Record {record.get('id')!r}: message {i} is from {msg.get('from')!r}, "
                      f"expected {expected!r} (turns must alternate human, gpt).")
  return [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv), 2)]


class _Builder:
  """Accumulates spans into the token vectors."""

  def __init__(self):
    self.tokens, self.modality, self.role, self.turn = [], [], [], []

  def add(self, ids, role, turn, modality=0):
    self.tokens += list(ids)
    self.modality += [modality] * len(ids)
    self.role += [role] * len(ids)
    self.turn += [turn] * len(ids)

  def arrays(self, images, image_size):
    n = len(self.tokens)
    imgs = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return {"tokens": np.array(self.tokens, np.int32),
            "modality": np.array(self.modality, np.int32),
            "role": np.array(self.role, np.int32), "turn": np.array(self.turn, np.int32),
            "positions": np.arange(n, dtype=np.int32), "images": imgs}


def encode(record, tok: Tokenizer, tokens_per_image: int, order: str = "I&T",
           stage: str = "sft", drop_last_answer: bool = False, image_size: int = 32):
  """One record -> dict of tokens, modality, role, turn, positions i32[n] and images uint8[k,...].

  drop_last_answer: stop after the last <|assistant|> (an evaluation prompt).
  """
  images = check_images(record)
  image_span = [tok.image_id] * tokens_per_image
  sp = lambda t: [tok.token_id(t)]
  b = _Builder()
  if stage == "pt":
    b.add(sp("<s>"), PROMPT, 0)
    for _ in images:
      b.add(image_span, PROMPT, 0, modality=1)
    b.add(tok.encode(record["caption"]) + sp("<|endofchunk|>"), RESPONSE, 0)
    return b.arrays(images, image_size)
  turns = _turns(record)
  tags = sum(q.count(IMAGE_TAG) for q, _ in turns)
  if tags != len(images):
    raise BadRecord(f"Record {record.get('id')!r} has {tags} {IMAGE_TAG} placeholders but "
                    f"{len(images)} images; they must match one to one.")
  for t, (question, answer) in enumerate(turns):
    if t == 0:
      b.add(sp("<s>") + sp("<|system|>") + tok.encode(synthetic.SYSTEM) + sp("<|end|>"), PROMPT, 0)
    b.add(sp("<|user|>"), PROMPT, t)
    text = tok.encode(question.replace(IMAGE_TAG, " ").strip())
    n_images = question.count(IMAGE_TAG)
    if order == "T&I":
      b.add(text, PROMPT, t)
    for _ in range(n_images):
      b.add(image_span, PROMPT, t, modality=1)
    if order == "I&T":
      b.add(text, PROMPT, t)
    b.add(sp("<|end|>") + sp("<|assistant|>"), PROMPT, t)
    if drop_last_answer and t == len(turns) - 1:
      break
    b.add(tok.encode(answer) + sp("<|end|>"), RESPONSE, t)
  return b.arrays(images, image_size)
