"""The Grain pipeline: packing, the batch contract, determinism, iterator state, bad input."""
import functools

import grain
import numpy as np
import pytest

from mma_jax.data import chat, pipeline, vocab
from mma_jax.data.shapes import generate

TOK = vocab.shapes_tokenizer()
TPI = 4  # tokens per image
RECORDS = [generate.make_example(1, "train", i, image_size=16) for i in range(24)]


def _dataset(records=RECORDS, **kw):
  args = dict(batch_size=2, pack_length=96, max_images=4, packing=True, seed=0, prefetch=0)
  args.update(kw)
  encode = functools.partial(chat.encode, tok=TOK, tokens_per_image=TPI, image_size=16)
  return pipeline.train_dataset(records, encode, **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_packed_rows_follow_the_batch_contract():
  batch = next(iter(_dataset()))
  assert batch["tokens"].shape == (2, 96) and batch["images"].shape == (2, 4, 16, 16, 3)
  for b in range(2):
    seg = batch["segment_ids"][b]
    segments = [s for s in np.unique(seg) if s]
    assert len(segments) >= 2  # packed
    for s in segments:  # positions restart; roles/images line up per example
      np.testing.assert_array_equal(batch["positions"][b][seg == s], np.arange(np.sum(seg == s)))
    assert (batch["role"][b][seg == 0] == 0).all()
    # Image slots: as many valid as image-token groups; slot k holds the k-th example image.
    n_img_tokens = np.sum(batch["modality"][b] == 1)
    assert n_img_tokens == TPI * batch["image_valid"][b].sum()
    valid = batch["images"][b][batch["image_valid"][b]]
    assert valid.min() >= -1 and valid.max() <= 1
    # targets are the next token in the same example; loss only where that token is a response.
    t, tg, lm = batch["tokens"][b], batch["targets"][b], batch["loss_mask"][b]
    for i in range(95):
      same = seg[i] != 0 and seg[i + 1] == seg[i]
      assert tg[i] == (t[i + 1] if same else 0)
      assert lm[i] == (same and batch["role"][b][i + 1] == 2)


def test_images_fill_slots_in_placeholder_order():
  # With one bin, the first row holds examples 1..k of the stream in order.
  it = iter(_dataset(num_bins=1, batch_size=1))
  row = next(it)
  plain = iter(_dataset(num_bins=1, batch_size=1, packing=False))
  k = len(set(row["segment_ids"][0].tolist()) - {0})
  singles = _take(plain, k)
  expected = np.concatenate([s["images"][0][s["image_valid"][0]] for s in singles])
  np.testing.assert_array_equal(row["images"][0][row["image_valid"][0]], expected)
  # Padded rows hold one example each, with the same tokens as the packed row.
  packed_tokens = row["tokens"][0][row["segment_ids"][0] != 0]
  np.testing.assert_array_equal(
      packed_tokens, np.concatenate([s["tokens"][0][s["segment_ids"][0] != 0] for s in singles]))
  assert all(set(s["segment_ids"][0].tolist()) == {0, 1} for s in singles)


def test_deterministic_and_iterator_state_restores_the_stream():
  a = _take(iter(_dataset()), 3)
  it = iter(_dataset())
  _take(it, 1)
  state = it.get_state()
  rest = _take(it, 2)
  for x, y in zip(a[1:], rest):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
  fresh = iter(_dataset())
  fresh.set_state(state)
  for x, y in zip(rest, _take(fresh, 2)):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
    np.testing.assert_array_equal(x["images"], y["images"])
  other = next(iter(_dataset(seed=1)))
  assert not np.array_equal(other["tokens"], a[0]["tokens"])


def test_too_long_sample_is_an_error_or_a_counted_skip():
  with pytest.raises(chat.BadRecord, match="config.data.pack_length=30"):
    next(iter(_dataset(pack_length=30)))
  counter = pipeline.SkipCounter()
  long_record = dict(RECORDS[4], id="long-one",
                     conversations=[{"from": "human", "value": "<image>\n" + "a " * 80},
                                    {"from": "gpt", "value": "yes"}])
  broken = dict(RECORDS[6], id="broken-one", images=[np.zeros((3,), np.uint8)])
  records = RECORDS[:4] + [long_record, broken]
  batches = _take(iter(_dataset(records, skip_bad_records=True, counter=counter)), 3)
  assert counter.count >= 2
  assert all(np.sum(b["segment_ids"] != 0) > 0 for b in batches)
  with pytest.raises(chat.BadRecord, match="broken-one"):
    _take(iter(_dataset(records[:4] + [broken])), 3)


def test_a_skipped_record_is_counted_once_each_time_training_reads_it():
  """Grain maps records far ahead of training (hundreds, over the repeated dataset); the count
  is of the bad records the rows were built past, not of those decoded ahead."""
  first = next(iter(grain.MapDataset.range(len(RECORDS)).shuffle(seed=0)))  # read first
  records = list(RECORDS)
  records[first] = dict(RECORDS[first], id="broken-one", images=[np.zeros((3,), np.uint8)])
  counter = pipeline.SkipCounter()
  it = iter(_dataset(records, packing=False, skip_bad_records=True, counter=counter))
  next(it)
  assert counter.count == 1
  _take(it, 5)  # 12 of the 23 good records: the next pass (and the bad one again) is not read
  assert counter.count == 1


def test_cache_and_read_ahead_change_no_batch_and_encode_each_record_once():
  """Across three epochs of the 24 records, with a bad record skipped: the same batches with
  the example cache on or off and whatever Grain's read-ahead; cached, each record is encoded
  once however often training reads it, and the skip is still counted at every read."""
  records = list(RECORDS)
  records[5] = dict(records[5], conversations=records[5]["conversations"] * 40)  # too long

  def counting(record, calls, **kw):
    calls.append(record["id"])
    return chat.encode(record, **kw)

  def run(calls, **kw):  # each run its own list: Grain may still be reading ahead for another
    counter = pipeline.SkipCounter()
    encode = functools.partial(counting, calls=calls, tok=TOK, tokens_per_image=TPI,
                               image_size=16)
    ds = pipeline.train_dataset(records, encode, batch_size=2, pack_length=96, max_images=4,
                                seed=3, prefetch=0, skip_bad_records=True, counter=counter,
                                **kw)
    it = iter(ds)
    batches = _take(it, 18)  # about 3 epochs: 23 good records, about 4 per row
    return batches, counter.count, it

  plain, skips, _ = run([], cache=False, read_threads=16, read_ahead=500)
  calls = []
  cached, cached_skips, it = run(calls, cache=True, read_threads=2, read_ahead=8)
  assert sorted(calls) == sorted(r["id"] for r in records)  # each record encoded once
  assert cached_skips == skips >= 2
  for a, b in zip(plain, cached):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # The iterator state still restores the stream.
  state = it.get_state()
  after = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["tokens"], after["tokens"])
