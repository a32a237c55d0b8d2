"""Evaluation prompts: benchmark rows and the Task's own splits -> fixed-shape prompt batches.

A row becomes a normalized record whose last human turn is the question (a benchmark TSV row:
"<image>\\n" per image + the benchmark's fixed prompt); chat.prompt_encoder turns a record into
prompt tokens with the run's chat template, and prompt_batches pads them into one shape, so
decoding compiles once.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mma_jax.data import chat
from mma_jax.data import images as image_lib
from mma_jax.evaluate import scoring, vlmeval_tsv
from mma_jax.evaluate.vlmeval_tsv import Table
from mma_jax.tokens import PROMPT, SEQUENCE_KEYS


def split_table(task, split: str) -> tuple[Table, Callable[[int], dict]]:
  """A split of the Task's own records as a table (index, id, question, answer, category =
  question type, or source name for imported records) + a function giving row i's record."""
  records, categories = task.eval_records(split)
  rows = [{"index": str(i), "id": r["id"], "answer": r["conversations"][-1]["value"],
           "question": r["conversations"][-2]["value"].replace(chat.IMAGE_TAG, " ").strip(),
           "category": c} for i, (r, c) in enumerate(zip(records, categories))]
  table = Table(f"{task.name}:{split}", ["index", "id", "question", "answer", "category"], rows,
                list(range(1, len(rows) + 1)))
  return table, lambda i: task.with_pixels(records[i])


def tsv_record(table: Table, bench: scoring.Benchmark, image_size: int, i: int,
               grids=()) -> dict:
  """Row i as a normalized record: one human turn of images (AnyRes `grids`: tiled) + the
  benchmark's prompt."""
  images = vlmeval_tsv.images(table, i, image_size, grids)
  question = (chat.IMAGE_TAG + "\n") * len(images) + bench.build_prompt(table.rows[i])
  return {"id": table.rows[i]["index"], "images": images,
          "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": ""}]}


def prompt_batches(examples, *, batch_size: int, prompt_length: int, max_images: int,
                   image_size: int):
  """Evaluation prompts, right-padded to one shape so decoding compiles once.

  Args: examples: list of (example dict from chat.encode(..., drop_last_answer=True), answer,
    question type).
  Yields: (prompt dict of i32[B, P] vectors + images f32[B, N, H, W, 3], answers, types);
    padding rows have answer None.
  """
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    prompt = {k: np.zeros((batch_size, prompt_length), np.int32)
              for k in SEQUENCE_KEYS + ("segment_ids",)}
    prompt["images"] = np.zeros((batch_size, max_images, image_size, image_size, 3), np.float32)
    answers, types = [None] * batch_size, [None] * batch_size
    for row, (ex, answer, qtype) in enumerate(chunk):
      n, k = len(ex["tokens"]), len(ex["images"])
      if n > prompt_length or k > max_images:
        raise ValueError(f"An evaluation prompt has {n} tokens and {k} images; raise "
                         f"config.eval.prompt_length={prompt_length} / config.eval.max_images="
                         f"{max_images}.")
      for key in SEQUENCE_KEYS:
        prompt[key][row, :n] = ex[key]
      prompt["segment_ids"][row, :n] = 1
      prompt["images"][row, :k] = image_lib.normalize(ex["images"])
      answers[row], types[row] = answer, qtype
    for row in range(len(chunk), batch_size):  # filler rows: one token, never scored
      prompt["segment_ids"][row, 0] = 1
      prompt["role"][row, 0] = PROMPT
    yield prompt, answers, types
