"""Input pipeline throughput and padding: packed vs padded rows, from one run.

  python benchmarks/pipeline.py [--batches 40]

Reads the built-in benchmark from TFDS ArrayRecord files through Grain, as training does, and
prints examples/s and the padding fraction (share of row slots holding no example token).
"""
import argparse
import functools
import tempfile
import time

import grain
import numpy as np

from mma_jax.data import chat, pipeline, vocab
from mma_jax.data.shapes import builder as shapes_builder


def measure(source, encode, packing, batches, batch_size, length):
  ds = pipeline.train_dataset(source, encode, batch_size=batch_size, pack_length=length,
                                    max_images=4, packing=packing, prefetch=0)
  it = iter(ds)
  next(it)  # warm up
  examples, pad, t0 = 0, 0.0, time.perf_counter()
  for _ in range(batches):
    b = next(it)
    seg = b["segment_ids"]
    examples += sum(len(set(row.tolist()) - {0}) for row in seg)
    pad += float(np.mean(seg == 0))
  return examples / (time.perf_counter() - t0), pad / batches


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--length", type=int, default=160)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as d:
    builder = shapes_builder.builder(d, train_size=1200, validation_size=10, test_size=10)
    source = grain.MapDataset.source(builder.as_data_source("train")).map(
        shapes_builder.decode_record)
    for stage in ("sft", "pt"):
      encode = functools.partial(chat.encode, tok=vocab.shapes_tokenizer(), tokens_per_image=16,
                                 stage=stage)
      res = {p: measure(source, encode, p, args.batches, args.batch_size, args.length)
             for p in (True, False)}
      for p, (eps, pad) in res.items():
        print(f"{stage:4s} {'packed' if p else 'padded'}: {eps:8.0f} examples/s  "
              f"padding {pad:6.1%}")
      (e1, p1), (e0, p0) = res[True], res[False]
      print(f"{stage:4s} packed/padded: examples/s x{e1 / e0:.2f}, padding {p1:.1%} vs {p0:.1%}")


if __name__ == "__main__":
  main()
