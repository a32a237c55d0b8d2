"""Tokenizer: any `tokenizers.Tokenizer` (an HF tokenizer.json), or a word-level one built here
for the shapes benchmark. Special tokens are matched whole, never split."""
from __future__ import annotations

import tokenizers
from tokenizers import models, pre_tokenizers

from mma_jax.data import synthetic

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<image>", "<|system|>", "<|user|>", "<|assistant|>",
            "<|end|>", "<|endofchunk|>")


class Tokenizer:
  """Thin wrapper naming the ids the chat template and the decoder need."""

  def __init__(self, tok: tokenizers.Tokenizer):
    self.tok = tok
    for name in ("<pad>", "<image>", "<|end|>"):
      if tok.token_to_id(name) is None:
        raise ValueError(f"The tokenizer has no {name!r} token; add it as a special token.")

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
    return self.token_id("<pad>")

  @property
  def eos_id(self) -> int:
    """End of every answer."""
    return self.token_id("<|end|>")

  @property
  def image_id(self) -> int:
    return self.token_id("<image>")

  def save(self, path: str) -> None:
    self.tok.save(path)

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    return cls(tokenizers.Tokenizer.from_file(path))


def shapes_tokenizer() -> Tokenizer:
  """Word-level tokenizer over the benchmark's words; specials first (<pad> = 0)."""
  words = list(SPECIALS) + [w for w in synthetic.vocabulary() if w not in SPECIALS]
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                              unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens([tokenizers.AddedToken(s, special=True) for s in SPECIALS])
  return Tokenizer(tok)
