"""VLMEvalKit TSV tables: base64 images, index references, image files, bad rows, predictions."""
import base64
import csv
import io

import numpy as np
import pytest
from PIL import Image

from mma_jax.data import pipeline
from mma_jax.evaluate import vlmeval_tsv
from mma_jax.evaluate.vlmeval_tsv import BadTableRow

RED, BLUE = (200, 30, 30), (30, 30, 200)


def image_b64(rgb, height=20, width=28) -> str:
  """A PNG of one colour with a grey square, base64 (> 64 characters, as VLMEvalKit stores)."""
  img = np.full((height, width, 3), rgb, np.uint8)
  img[2:6, 2:6] = 128
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "PNG")
  return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, columns, rows) -> str:
  """rows: dicts (missing keys -> empty cells) or lists (written as they are)."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f, delimiter="\t", lineterminator="\n")
    w.writerow(columns)
    for r in rows:
      w.writerow(r if isinstance(r, list) else [r.get(c, "") for c in columns])
  return str(path)


COLUMNS = ["index", "image", "question", "answer", "category"]


def test_images_decode_resize_and_follow_index_references(tmp_path):
  path = write_tsv(tmp_path / "b.tsv", COLUMNS, [
      {"index": 10, "image": image_b64(RED), "question": "q0", "answer": "Yes"},
      {"index": 11, "image": "10", "question": "q1", "answer": "No"},  # shares row 10's image
      {"index": 12, "image": image_b64(BLUE), "question": "q2", "answer": "No"}])
  table = vlmeval_tsv.read_table(path, ("index", "question", "answer"))
  assert [r["index"] for r in table.rows] == ["10", "11", "12"] and table.lines == [2, 3, 4]
  first, shared, blue = (vlmeval_tsv.images(table, i, 8) for i in range(3))
  assert len(first) == 1 and first[0].shape == (8, 8, 3) and first[0].dtype == np.uint8
  np.testing.assert_array_equal(first[0], shared[0])
  assert tuple(first[0][7, 7]) == RED and tuple(blue[0][7, 7]) == BLUE


def test_image_path_rows_read_files_next_to_the_table(tmp_path):
  Image.fromarray(np.full((5, 7, 3), BLUE, np.uint8)).save(tmp_path / "a.png")
  path = write_tsv(tmp_path / "b.tsv", ["index", "image_path", "question", "answer"],
                   [{"index": 1, "image_path": "a.png"}, {"index": 2, "image_path": "gone.jpg"}])
  table = vlmeval_tsv.read_table(path)
  assert tuple(vlmeval_tsv.images(table, 0, 4)[0][0, 0]) == BLUE
  with pytest.raises(BadTableRow, match=rf"b.tsv line 3 \(index 2\).*{tmp_path}/gone.jpg does not"):
    vlmeval_tsv.images(table, 1, 4)


def test_bad_rows_name_the_file_and_row_or_are_counted(tmp_path):
  good = image_b64(RED)
  rows = [{"index": 1, "image": good},
          [2, good, "q", "a", "c", "an extra field"],
          {"index": 3, "image": "not base64 at all, and longer than sixty-four characters " * 2},
          {"index": 4, "image": "99"},  # a reference to an index that does not exist
          {"index": 1, "image": good}]  # repeated index
  path = write_tsv(tmp_path / "bad.tsv", COLUMNS, rows)
  with pytest.raises(BadTableRow, match=r"bad.tsv line 3: the row has more fields than the header"):
    vlmeval_tsv.read_table(path)
  counter = pipeline.SkipCounter()
  table = vlmeval_tsv.read_table(path, skip_bad_rows=True, counter=counter)
  assert counter.count == 3  # extra field, repeated index, dangling reference
  assert [r["index"] for r in table.rows] == ["1", "3"]
  with pytest.raises(BadTableRow, match=r"bad.tsv line 4 \(index 3\): cannot read the image"):
    vlmeval_tsv.images(table, 1, 8)
  with pytest.raises(ValueError, match=r"missing column\(s\) \['answer'\]"):
    write_tsv(tmp_path / "x.tsv", ["index", "image"], [{"index": 1}])
    vlmeval_tsv.read_table(str(tmp_path / "x.tsv"), ("index", "answer"))
  with pytest.raises(BadTableRow, match="line 2: the row has fewer fields"):
    with open(tmp_path / "short.tsv", "w") as f:
      f.write("index\tquestion\tanswer\n1\tq\n")
    vlmeval_tsv.read_table(str(tmp_path / "short.tsv"))


def test_predictions_drop_the_image_and_round_trip(tmp_path):
  path = write_tsv(tmp_path / "b.tsv", COLUMNS, [
      {"index": 1, "image": image_b64(RED), "question": "q", "answer": "A", "category": "x"}])
  table = vlmeval_tsv.read_table(path)
  tricky = 'two\tlines\nwith "quotes"'
  out = str(tmp_path / "out" / "p.tsv")
  vlmeval_tsv.write_predictions(out, table.columns, [dict(table.rows[0], prediction=tricky)])
  back = vlmeval_tsv.read_table(out, ("index", "prediction"))
  assert back.columns == ["index", "question", "answer", "category", "prediction"]
  assert back.rows == [{"index": "1", "question": "q", "answer": "A", "category": "x",
                        "prediction": tricky}]
