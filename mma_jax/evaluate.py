"""Evaluation: decode answers with the training mask and score them per question type."""
from __future__ import annotations

import collections
from typing import Iterable, Mapping, Sequence

import numpy as np

from mma_jax import decode


def normalize(text: str) -> str:
  return " ".join(text.lower().strip().strip(".").split())


def score(predictions: Sequence[str], answers: Sequence[str], types: Sequence[str],
          chance: Mapping[str, float]) -> dict[str, float]:
  """Exact-match accuracy per question type and overall, yes/no F1 on 'exist', chance levels.

  Returns a flat dict: accuracy/<type>, chance/<type>, accuracy/all, f1/exist (positive = yes).
  """
  hits = collections.defaultdict(list)
  for pred, ans, qtype in zip(predictions, answers, types, strict=True):
    hits[qtype].append(normalize(pred) == normalize(ans))
  out = {f"accuracy/{t}": float(np.mean(h)) for t, h in sorted(hits.items())}
  out.update({f"chance/{t}": float(chance[t]) for t in sorted(hits) if t in chance})
  out["accuracy/all"] = float(np.mean([x for h in hits.values() for x in h])) if hits else 0.0
  exist = [(normalize(p), normalize(a)) for p, a, t in zip(predictions, answers, types)
           if t == "exist"]
  if exist:
    tp = sum(p == "yes" and a == "yes" for p, a in exist)
    fp = sum(p == "yes" and a != "yes" for p, a in exist)
    fn = sum(p != "yes" and a == "yes" for p, a in exist)
    out["f1/exist"] = 2 * tp / max(2 * tp + fp + fn, 1)
    out["yes_rate/exist"] = float(np.mean([p == "yes" for p, _ in exist]))
  return out


def predict(model, params, prompt_batches: Iterable, tokenizer, kind: str,
            max_new_tokens: int):
  """Greedy answers for batches of (prompt arrays, answers, question types).

  Yields (prediction strings, answers, types) per batch; rows whose answers are None are
  padding rows added to keep one compiled shape, and are dropped.
  """
  for prompt, answers, types in prompt_batches:
    tokens, lengths = decode.generate(model, params, prompt, kind=kind,
                                      max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                                      pad_id=tokenizer.pad_id)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    texts = [tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths)]
    keep = [i for i, a in enumerate(answers) if a is not None]
    yield [texts[i] for i in keep], [answers[i] for i in keep], [types[i] for i in keep]


def evaluate(model, params, prompt_batches: Iterable, tokenizer, kind: str,
             max_new_tokens: int, chance: Mapping[str, float]):
  """Decode every batch and score. Returns (metrics dict, list of (pred, answer, type))."""
  preds, answers, types = [], [], []
  for p, a, t in predict(model, params, prompt_batches, tokenizer, kind, max_new_tokens):
    preds += p; answers += a; types += t
  return score(preds, answers, types, chance), list(zip(preds, answers, types))
