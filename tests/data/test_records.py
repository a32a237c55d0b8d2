"""The normalized record schema, image loading and decoding, and the stored record format."""
import io

import numpy as np
import pytest
from PIL import Image

from mma_jax.data import chat, records, tfds_records
from tests.data.test_importers import draw


def record(**kw):
  r = {"id": "r1", "image": ["a.png", "b.png"], "source": "mine", "task_type": "conversation",
       "conversations": [{"from": "human", "value": "<image>\nFirst?"},
                         {"from": "gpt", "value": "one"},
                         {"from": "human", "value": "<image> second?"},
                         {"from": "gpt", "value": "two"}]}
  r.update(kw)
  return r


def test_validate_accepts_multi_turn_multi_image_and_captions():
  assert records.validate(record(), "f row 0")["id"] == "r1"
  cap = {"id": "c", "image": ["x.jpg"], "conversations": [], "caption": "A dog.",
         "source": "kale", "task_type": "caption"}
  assert records.validate(cap, "s.tar sample 'c'") is cap
  text_only = record(image=[], conversations=[{"from": "human", "value": "Hi?"},
                                              {"from": "gpt", "value": "hi"}])
  records.validate(text_only, "f row 1")


@pytest.mark.parametrize("change, message", [
    (dict(id=""), "'id' must be a non-empty string"),
    (dict(image="a.png"), "'image' must be a list"),
    (dict(image=["a.png"]), "has 2 <image> tags for 1 images"),
    (dict(conversations=[{"from": "human", "value": "<image><image>"},
                         {"from": "human", "value": "x"}]), "expected 'gpt'"),
    (dict(conversations=[{"from": "human", "value": 3}]), "string values"),
    (dict(task_type="caption", caption=""), "needs a non-empty 'caption'"),
    (dict(source=None), "'source' must be a non-empty string"),
])
def test_validate_names_the_row_and_the_problem(change, message):
  with pytest.raises(records.BadRow, match=message) as e:
    records.validate(record(**change), "data.json row 7")
  assert e.value.where == "data.json row 7" and e.value.reason == records.MALFORMED_ROW
  assert str(e.value).startswith("data.json row 7: malformed row: ")


def test_read_image_checks_the_file_and_can_shrink_it(tmp_path):
  draw(f"{tmp_path}/big.png", size=(64, 32))
  data = records.read_image(str(tmp_path), "big.png", "f row 0")
  assert data == open(f"{tmp_path}/big.png", "rb").read()
  small = Image.open(io.BytesIO(records.read_image(str(tmp_path), "big.png", "f row 0",
                                                   max_side=16)))
  assert small.size == (16, 8) and small.format == "JPEG"
  with pytest.raises(records.BadRow, match=r"f row 3: missing image: .*nope.png does not exist"):
    records.read_image(str(tmp_path), "nope.png", "f row 3")
  (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
  with pytest.raises(records.BadRow, match=r"f row 4: undecodable image: .*bad.jpg"):
    records.read_image(str(tmp_path), "bad.jpg", "f row 4")


def test_with_pixels_decodes_for_the_stage_and_names_bad_records(tmp_path):
  draw(f"{tmp_path}/a.png")
  png = open(f"{tmp_path}/a.png", "rb").read()
  r = record(images=[png, png])
  out = records.with_pixels(r, 16, "sft")
  assert [im.shape for im in out["images"]] == [(16, 16, 3)] * 2 and out["id"] == "r1"
  # At the file's own square size decoding is exact: the drawn pixels come back.
  square = draw(f"{tmp_path}/sq.png", size=(24, 24))
  sq = records.with_pixels(record(images=[open(f"{tmp_path}/sq.png", "rb").read(), png]), 24,
                           "sft")
  np.testing.assert_array_equal(sq["images"][0], square)
  with pytest.raises(chat.BadRecord, match=r"'r1' .* conversation record but config.stage='pt'"):
    records.with_pixels(r, 16, "pt")
  with pytest.raises(chat.BadRecord, match=r"'r1' \(source 'mine'\): image 'b.png' cannot be "
                     r"decoded.*skip_bad_records"):
    records.with_pixels(record(images=[png, b"junk"]), 16, "sft")


def test_stored_splits_round_trip_and_a_failed_write_keeps_the_old_data(tmp_path):
  draw(f"{tmp_path}/a.png")
  png = open(f"{tmp_path}/a.png", "rb").read()
  out = str(tmp_path / "src")
  items = [(record(id=f"r{i}"), [png, png]) for i in range(5)]
  assert tfds_records.write(out, "train", items, records_per_shard=2) == 5
  assert len(tfds_records._shards(out, "train")) == 3  # pylint: disable=protected-access
  tfds_records.write(out, "test", items[:1])
  assert {k: v.num_examples for k, v in tfds_records.splits(out).items()} == {"train": 5,
                                                                            "test": 1}
  back = tfds_records.read_all(out, "train")
  assert sorted(r["id"] for r in back) == [f"r{i}" for i in range(5)]
  assert back[0]["conversations"] == record()["conversations"] and back[0]["images"][1] == png

  def failing():
    yield items[0]
    raise RuntimeError("disk full")
  with pytest.raises(RuntimeError):
    tfds_records.write(out, "train", failing())
  assert len(tfds_records.read_all(out, "train")) == 5
  with pytest.raises(KeyError, match=r"config.data.mixture: .* has no split 'validation'"):
    tfds_records.open_split(out, "validation")
  with pytest.raises(FileNotFoundError, match="no imported records in .*Import them first"):
    tfds_records.open_split(str(tmp_path / "nothing"), "train")
