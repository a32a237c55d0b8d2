"""A thin wrapper over any `tokenizers.Tokenizer`, and the word-level one of the benchmark.

The wrapper is what the rest of the code sees, so a real HF `tokenizer.json` takes the same path:
`Tokenizer.load("tokenizer.json")`. encode() never adds special tokens; the chat template places
every special token itself.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import tokenizers
from tokenizers import models, normalizers, pre_tokenizers

from mma_jax.data import shapes

PAD = "<pad>"
UNK = "<unk>"
BOS = "<s>"
EOS = "</s>"
IMAGE = "<image>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
END_OF_CHUNK = "<|endofchunk|>"
# Order fixes the ids: <pad> = 0, <unk> = 1, ...
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE, SYSTEM, USER, ASSISTANT, END, END_OF_CHUNK)


class Tokenizer:
  """encode/decode and the ids the template, model and decoder need."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    self._tok = tokenizer
    for name in (PAD, IMAGE, END):
      if tokenizer.token_to_id(name) is None:
        raise ValueError(f"tokenizer has no {name!r} token; add it as a special token "
                         "(tokenizer.add_special_tokens) before wrapping it.")

  @property
  def backend(self) -> tokenizers.Tokenizer:
    return self._tok

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; no BOS/EOS or other special tokens are added."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, special tokens (pad, end, image, ...) left out."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def token_id(self, token: str) -> int:
    i = self._tok.token_to_id(token)
    if i is None:
      raise KeyError(f"token {token!r} is not in the vocabulary")
    return i

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self.token_id(PAD)

  @property
  def eos_id(self) -> int:
    """`<|end|>`: closes every answer, so generation stops on it."""
    return self.token_id(END)

  @property
  def image_id(self) -> int:
    return self.token_id(IMAGE)

  def save(self, path: str) -> None:
    self._tok.save(str(path))

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    return cls(tokenizers.Tokenizer.from_file(str(path)))


def word_level(words: Iterable[str]) -> Tokenizer:
  """Lower-cased word-level tokenizer: specials (ids 0..9) then the sorted distinct words.

  Text splits on whitespace and around punctuation; special tokens are matched first, so
  `<|user|>how` is two tokens and `<image>` is never split. Unknown words map to `<unk>`.
  """
  words = sorted({w.lower() for w in words} - set(SPECIAL_TOKENS))
  vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + words)}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                          for t in SPECIAL_TOKENS])
  return Tokenizer(tok)


def words_of(texts: Iterable[str]) -> set[str]:
  """The words word_level() would see in `texts` (whitespace split, punctuation isolated)."""
  pre = pre_tokenizers.Sequence(
      [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
  return {w.lower() for text in texts for w, _ in pre.pre_tokenize_str(text)}


def shapes_tokenizer(extra_texts: Iterable[str] = ()) -> Tokenizer:
  """The benchmark's tokenizer: its vocabulary (system prompt included) and `extra_texts`."""
  return word_level(words_of([*shapes.vocabulary(), *extra_texts]))
