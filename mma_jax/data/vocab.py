"""Tokenizer: any `tokenizers.Tokenizer` (an HF tokenizer.json) with the chat template it is
used with, or a word-level one built here for the shapes benchmark. Special tokens are matched
whole, never split."""
from __future__ import annotations

import tokenizers
from tokenizers import models, pre_tokenizers

from mma_jax.data import templates
from mma_jax.data.shapes import generate

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<image>", "<|system|>", "<|user|>", "<|assistant|>",
            "<|end|>", "<|endofchunk|>")


class Tokenizer:
  """Thin wrapper naming the ids the chat template and the decoder need."""

  def __init__(self, tok: tokenizers.Tokenizer, template: str | templates.Template = "shapes"):
    self.tok = tok
    self.template = templates.get(template) if isinstance(template, str) else template
    for name in self.template.special_tokens():
      if tok.token_to_id(name) is None:
        raise ValueError(f"The tokenizer has no {name!r} token, which chat template "
                         f"{self.template.name!r} needs; add it as a special token "
                         "(mma_jax.data.vocab.add_image_tokens).")

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    return self.tok.decode(list(ids), skip_special_tokens=True)

  def token_id(self, token: str) -> int:
    i = self.tok.token_to_id(token)
    if i is None:
      raise KeyError(f"Token {token!r} is not in the vocabulary.")
    return i

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size()

  @property
  def pad_id(self) -> int:
    """Filler of padded rows (never attended): the template's pad token, '<pad>' or 0."""
    for name in (self.template.pad, "<pad>"):
      if self.tok.token_to_id(name) is not None:
        return self.tok.token_to_id(name)
    return 0

  @property
  def eos_id(self) -> int:
    """End of every answer: the template's stop token."""
    return self.token_id(self.template.stop)

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Every token that ends a generated answer: the template's stop token first, then those of
    its extra_stops the vocabulary has."""
    extra = (self.tok.token_to_id(t) for t in self.template.extra_stops)
    return tuple(dict.fromkeys([self.eos_id, *(i for i in extra if i is not None)]))

  @property
  def image_id(self) -> int:
    return self.token_id(self.template.image)

  def save(self, path: str) -> None:
    self.tok.save(path)

  @classmethod
  def load(cls, path: str, template: str = "shapes") -> "Tokenizer":
    return cls(tokenizers.Tokenizer.from_file(path), template)


def add_image_tokens(tok: tokenizers.Tokenizer, template: templates.Template) -> list[str]:
  """Add the template's image and PT-end tokens a text-only tokenizer lacks, as special tokens
  (new ids at the end of the vocabulary). Returns the tokens added, in id order."""
  missing = [t for t in template.added_tokens() if tok.token_to_id(t) is None]
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                          for t in missing])
  return missing


def shapes_tokenizer(difficulty: str = "easy", grid: int | None = None) -> Tokenizer:
  """Word-level tokenizer over the benchmark's words; specials first (<pad> = 0). The hard
  benchmark's has more words (a superset), so its ids are not the easy one's; a hard grid past
  4 x 4 (config.data.grid) adds its row and column names."""
  words = list(SPECIALS) + [w for w in generate.vocabulary(difficulty, grid)
                            if w not in SPECIALS]
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                              unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens([tokenizers.AddedToken(s, special=True) for s in SPECIALS])
  return Tokenizer(tok)
