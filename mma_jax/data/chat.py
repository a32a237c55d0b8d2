"""Records -> token ids and the four per-token vectors, by turn spans.

The record is written out with the tokenizer's chat template (mma_jax.data.templates) as
pieces of text, each carrying its role, turn and modality; the whole text is tokenized once and
each token takes the piece its last character falls in. So the ids are the family template's
own, the loss mask comes from the pieces, and nothing is ever re-tokenized. Per turn t:
  prompt:    [bos + system block if t == 0] user_start {images + text} user_end assistant_start
  response:  {answer} assistant_end [conversation_end after the last answer]   (role 2: loss)
  PT:        bos {images} [pt_prompt] {caption} pt_end     (caption + pt_end are the response;
             the optional instruction is prompt text, so under `mma` the images see it)
Each image is one placeholder token in the text, expanded to tokens_per_image slots. Order
'I&T' puts a turn's images before its text, 'T&I' after it.
"""
from __future__ import annotations

import bisect
import functools

import numpy as np

from mma_jax.data.vocab import Tokenizer
from mma_jax.tokens import IMAGE, PROMPT, RESPONSE

IMAGE_TAG = "<image>"


class BadRecord(ValueError):
  """A record that cannot be turned into tokens; the message names it and says what to do."""


def check_images(record) -> list[np.ndarray]:
  """The record's images, each as uint8[K, H, W, 3] (K = 1, or an AnyRes image's tiles: its
  thumbnail then its tiles, mma_jax.data.images.tiles), or BadRecord."""
  images = record.get("images")
  if images is None:
    raise BadRecord(f"Record {record.get('id')!r} has no 'images' field; use [] for text-only.")
  out = []
  for n, img in enumerate(images):
    img = None if img is None else np.asarray(img)
    if (img is None or img.dtype != np.uint8 or img.ndim not in (3, 4) or img.shape[-1] != 3
        or img.size == 0):
      got = None if img is None else f"{img.dtype}{list(img.shape)}"
      raise BadRecord(f"Record {record.get('id')!r}: image {n} is missing or corrupt (got {got}); "
                      "expected uint8[H, W, 3] (or [tiles, H, W, 3]). Fix or drop the record, "
                      "or set config.data.skip_bad_records=True to skip such records with a "
                      "count.")
    out.append(img if img.ndim == 4 else img[None])
  return out


def turns(record) -> list[tuple[str, str]]:
  """(question, answer) per turn of an SFT record, or BadRecord naming it."""
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


class _Pieces:
  """Text pieces with their role, turn and modality, joined into one string."""

  def __init__(self):
    self.text, self.starts, self.meta = [], [], []
    self.length = 0

  def add(self, text, role, turn, modality=0):
    if text:
      self.starts.append(self.length)
      self.text.append(text)
      self.meta.append((role, turn, modality))
      self.length += len(text)

  def encode(self, tok: Tokenizer, tokens_per_image: int, images, image_size, record_id):
    enc = tok.tok.encode("".join(self.text), add_special_tokens=False)
    tokens, modality, role, turn = [], [], [], []
    tiles = iter([len(image) for image in images])  # per placeholder, in order
    for token, (begin, end) in zip(enc.ids, enc.offsets):
      r, t, m = self.meta[bisect.bisect_right(self.starts, max(end - 1, begin)) - 1]
      if m:
        if token != tok.image_id:
          raise BadRecord(f"Record {record_id!r}: the tokenizer splits the image placeholder "
                          f"{tok.template.image!r}; add it as a special token.")
        n = tokens_per_image * next(tiles, 1)  # an AnyRes image: every tile, one media span
        tokens += [token] * n
        modality += [m] * n
        role += [r] * n
        turn += [t] * n
      else:
        tokens.append(token); modality.append(0); role.append(r); turn.append(t)
    n = len(tokens)
    imgs = (np.concatenate(images) if images
            else np.zeros((0, image_size, image_size, 3), np.uint8))
    return {"tokens": np.array(tokens, np.int32), "modality": np.array(modality, np.int32),
            "role": np.array(role, np.int32), "turn": np.array(turn, np.int32),
            "positions": np.arange(n, dtype=np.int32), "images": imgs}


def encode(record, tok: Tokenizer, tokens_per_image: int, order: str = "I&T",
           stage: str = "sft", drop_last_answer: bool = False, image_size: int = 32,
           pt_prompt: str = ""):
  """One record -> dict of tokens, modality, role, turn, positions i32[n] and images uint8[k,...].

  The chat template is the tokenizer's (tok.template). drop_last_answer: stop after the last
  assistant_start (an evaluation prompt).
  """
  tpl = tok.template
  images = check_images(record)
  p = _Pieces()
  if stage == "pt":
    p.add(tpl.bos, PROMPT, 0)
    for _ in images:
      p.add(tpl.image, PROMPT, 0, modality=IMAGE)
    if pt_prompt:  # after the images, separated from the caption as words are
      p.add(" " + pt_prompt.strip() + " ", PROMPT, 0)
    p.add(record["caption"] + tpl.pt_end, RESPONSE, 0)
    return p.encode(tok, tokens_per_image, images, image_size, record.get("id"))
  pairs = turns(record)
  tags = sum(q.count(IMAGE_TAG) for q, _ in pairs)
  if tags != len(images):
    raise BadRecord(f"Record {record.get('id')!r} has {tags} {IMAGE_TAG} placeholders but "
                    f"{len(images)} images; they must match one to one.")
  clean = (lambda x: x.strip()) if tpl.trim else (lambda x: x)
  system = record.get("system", tpl.default_system)
  for t, (question, answer) in enumerate(pairs):
    if t == 0:
      p.add(tpl.bos, PROMPT, 0)
      if tpl.system and (system or tpl.system_always):
        p.add(tpl.system.format(system=clean(system)), PROMPT, 0)
    p.add(tpl.user_start, PROMPT, t)
    text = question.replace(IMAGE_TAG, "").strip()
    n_images = question.count(IMAGE_TAG)
    image_block = lambda: [p.add(tpl.image, PROMPT, t, modality=IMAGE) for _ in range(n_images)]
    if order == "T&I":
      p.add(text + (tpl.image_sep if n_images else ""), PROMPT, t)
      image_block()
    else:
      image_block()
      p.add((tpl.image_sep if n_images else "") + text, PROMPT, t)
    p.add(tpl.user_end + tpl.assistant_start, PROMPT, t)
    if drop_last_answer and t == len(pairs) - 1:
      break
    end = tpl.conversation_end if t == len(pairs) - 1 else ""
    p.add(clean(answer) + tpl.assistant_end + end, RESPONSE, t)
  return p.encode(tok, tokens_per_image, images, image_size, record.get("id"))


def prompt_encoder(tok: Tokenizer, tokens_per_image: int, order: str, image_size: int):
  """record -> evaluation prompt: encode with the tokenizer's chat template, stopping after the
  last assistant header. Prompts are conversations whatever the training stage. The one
  builder of evaluation prompts (training-time evaluation, the evaluate CLI, mechanism)."""
  return functools.partial(encode, tok=tok, tokens_per_image=tokens_per_image, order=order,
                           stage="sft", drop_last_answer=True, image_size=image_size)
